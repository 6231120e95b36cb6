// The case page's diagram: bpmn-js's NavigatedViewer with the path the case took marked on it
// (completed elements and flows, active steps by SLA state, failed elements, counts where a
// loop ran more than once). The step table beside it says the same in text.
import NavigatedViewer from "bpmn-js/lib/NavigatedViewer";
import "bpmn-js/dist/assets/diagram-js.css";
import "bpmn-js/dist/assets/bpmn-js.css";
import "bpmn-js/dist/assets/bpmn-font/css/bpmn-embedded.css";

async function show(container) {
  const states = JSON.parse(container.dataset.states);
  const response = await fetch(container.dataset.bpmnUrl, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`diagram: ${response.status}`);
  const viewer = new NavigatedViewer({ container });
  await viewer.importXML(await response.text());
  const canvas = viewer.get("canvas");
  const overlays = viewer.get("overlays");
  const registry = viewer.get("elementRegistry");
  canvas.zoom("fit-viewport");
  for (const element of states) {
    if (!registry.get(element.element_id)) continue;
    for (const marker of element.markers) canvas.addMarker(element.element_id, `bpm-${marker}`);
    if (element.count > 1) {
      overlays.add(element.element_id, "count", {
        position: { bottom: 8, right: 12 },
        html: `<span class="bpm-count" role="img" aria-label="×${element.count}">×${element.count}</span>`,
      });
    }
    if (element.badge) {
      const badge = document.createElement("span");
      badge.className = `bpm-badge bpm-badge-${element.badge_state}`;
      badge.textContent = element.badge;
      overlays.add(element.element_id, "sla", { position: { top: -14, right: 8 }, html: badge });
    }
  }
  viewer.on("element.click", (event) => {
    const row = document.querySelector(`[data-element="${CSS.escape(event.element.id)}"]`);
    if (row) { row.scrollIntoView({ block: "center" }); row.focus(); }
  });
  container.dataset.ready = "true";
}

document.querySelectorAll("[data-bpmn-url]").forEach((container) => {
  show(container).catch((error) => {
    container.dataset.ready = "error";
    container.textContent = container.dataset.failed || String(error);
  });
});
