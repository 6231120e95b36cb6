// The draft editor's comparison with the deployed version: sends the canvas's XML (saved or
// not) to the server's diff and shows what changed, in words, under the canvas, with a marker
// and a badge on every added or changed element (a removed one is no longer on the canvas, so
// it is only listed). Its own bundle, apart from the modeler's: it uses the modeler the editor
// hands over (root.bpmModeler, or the "bpm:modeler-ready" event) through bpmn-js's documented
// services (canvas markers, overlays, selection).
const MARKERS = { added: "bpm-diff-added", changed: "bpm-diff-changed" };

function csrf() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

function attach(root, modeler) {
  const button = root.querySelector("[data-compare]");
  const list = root.querySelector("#diff-list");
  const summary = root.querySelector("#diff-summary");
  if (!button || !list) return;
  const canvas = modeler.get("canvas");
  const overlays = modeler.get("overlays");
  const registry = modeler.get("elementRegistry");
  const selection = modeler.get("selection");
  let marked = [];

  function clear() {
    for (const [id, marker] of marked) if (registry.get(id)) canvas.removeMarker(id, marker);
    overlays.remove({ type: "bpm-diff" });
    marked = [];
    list.replaceChildren();
  }

  function show(answer) {
    clear();
    summary.textContent = answer.summary;
    for (const change of answer.changes) {
      const item = document.createElement("li");
      item.dataset.elementId = change.element_id;
      item.dataset.kind = change.kind;
      const text = root.dataset.chinese === "true" ? change.message : change.message_en;
      const element = registry.get(change.element_id);
      if (element && change.kind !== "removed") {
        const link = document.createElement("button");
        link.type = "button";
        link.className = "link";
        link.textContent = text;
        link.addEventListener("click", () => {
          selection.select(element);
          if (canvas.zoom() < 0.8) canvas.zoom(1);
          canvas.scrollToElement(element);
        });
        item.append(link);
        const marker = MARKERS[change.kind];
        canvas.addMarker(change.element_id, marker);
        marked.push([change.element_id, marker]);
        if (element.type !== "bpmn:SequenceFlow") {
          const badge = document.createElement("span");
          badge.className = `bpm-diff-badge bpm-diff-badge-${change.kind}`;
          badge.dataset.diffFor = change.element_id;
          badge.setAttribute("role", "img");
          badge.setAttribute("aria-label", text);
          badge.title = text;
          badge.textContent = change.kind === "added" ? root.dataset.textAdded : root.dataset.textChanged;
          overlays.add(change.element_id, "bpm-diff", { position: { bottom: -4, left: -6 }, html: badge });
        }
      } else {
        item.textContent = text;
      }
      list.append(item);
    }
    root.dataset.diffed = String(answer.changes.length);
  }

  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      const { xml } = await modeler.saveXML({ format: true });
      const response = await fetch(root.dataset.diffUrl, {
        method: "POST", body: xml, credentials: "same-origin",
        headers: { "X-CSRFToken": csrf(), "Content-Type": "application/xml" },
      });
      const answer = await response.json().catch(() => ({ message: String(response.status) }));
      if (response.ok) show(answer);
      else { clear(); summary.textContent = answer.message; }
    } catch (error) {
      summary.textContent = String(error);
    } finally {
      button.disabled = false;
    }
  });
}

const root = document.getElementById("modeler");
if (root) {
  if (root.bpmModeler) attach(root, root.bpmModeler);
  else root.addEventListener("bpm:modeler-ready", (event) => attach(root, event.detail.modeler), { once: true });
}
