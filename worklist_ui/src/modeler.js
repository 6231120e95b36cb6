// The process owners' draft editor: bpmn-js's Modeler with the Camunda 7 properties panel
// (assignment, forms, extension properties) and its modelling behaviours, palette and context
// pad in Chinese. Save sends the XML with If-Match (the draft's ETag), so a save over someone
// else's is refused with who saved; Check runs the server's deploy lint and marks each problem
// on its element; Deploy deploys the saved draft as the next version.
import BpmnModeler from "bpmn-js/lib/Modeler";
import {
  BpmnPropertiesPanelModule,
  BpmnPropertiesProviderModule,
  CamundaPlatformPropertiesProviderModule,
} from "bpmn-js-properties-panel";
import CamundaPlatformBehaviors from "camunda-bpmn-js-behaviors/lib/camunda-platform";
import camundaModdle from "camunda-bpmn-moddle/resources/camunda.json";
import zn from "bpmn-js-i18n/translations/zn";
import "bpmn-js/dist/assets/diagram-js.css";
import "bpmn-js/dist/assets/bpmn-js.css";
import "bpmn-js/dist/assets/bpmn-font/css/bpmn-embedded.css";
import "@bpmn-io/properties-panel/dist/assets/properties-panel.css";
import { lintModules, startLint } from "./draft_lint.js";
import { startForms } from "./draft_forms.js";

// The panel's labels a process owner meets most, which bpmn-js-i18n does not carry.
const PANEL_ZH = {
  General: "常规", Name: "名称", ID: "编号", Documentation: "文档", "Element documentation": "元素文档",
  "User assignment": "任务分配", Assignee: "处理人", "Candidate groups": "候选组", "Candidate users": "候选人",
  "Due date": "到期时间", "Follow up date": "跟进时间", Priority: "优先级", Forms: "表单", Type: "类型",
  "Form key": "表单键", "Extension properties": "扩展属性", Value: "值", Condition: "条件",
  "Task listeners": "任务监听器", "Execution listeners": "执行监听器", Inputs: "输入", Outputs: "输出",
  "Asynchronous continuations": "异步延续", Timer: "定时器", Message: "消息", "Process ID": "流程编号",
  "Embedded or External Task Forms": "内嵌或外部任务表单", "<none>": "<无>",
};

function translator(chinese) {
  const table = chinese ? { ...zn, ...PANEL_ZH } : {};
  return (template, replacements = {}) =>
    (table[template] || template).replace(/{([^}]+)}/g, (_, key) => replacements[key] ?? `{${key}}`);
}

function csrf() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

async function start(root) {
  const chinese = root.dataset.chinese === "true";
  const modeler = new BpmnModeler({
    container: root.querySelector("#canvas"),
    propertiesPanel: { parent: root.querySelector("#properties") },
    additionalModules: [
      BpmnPropertiesPanelModule, BpmnPropertiesProviderModule, CamundaPlatformPropertiesProviderModule,
      CamundaPlatformBehaviors, { translate: ["value", translator(chinese)] }, ...lintModules,
    ],
    moddleExtensions: { camunda: camundaModdle },
    linting: { active: true },
  });
  const message = root.querySelector("#draft-message");
  const state = root.querySelector("#draft-state");
  const list = root.querySelector("#problems");

  const response = await fetch(root.dataset.xmlUrl, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`draft: ${response.status}`);
  root.dataset.etag = response.headers.get("ETag") || root.dataset.etag;
  await modeler.importXML(await response.text());
  const canvas = modeler.get("canvas");
  const overlays = modeler.get("overlays");
  const registry = modeler.get("elementRegistry");
  const selection = modeler.get("selection");
  canvas.zoom("fit-viewport");
  modeler.on("commandStack.changed", () => { state.textContent = root.dataset.textUnsaved; });

  function say(text, kind) {
    message.textContent = text;
    message.className = kind ? `flash flash-${kind}` : "";
  }

  let marked = [];
  function showProblems(problems) {
    for (const id of marked) if (registry.get(id)) canvas.removeMarker(id, "bpm-lint-error");
    overlays.remove({ type: "server-lint" });
    marked = [];
    list.replaceChildren();
    const byElement = new Map();
    for (const problem of problems) {
      const item = document.createElement("li");
      item.dataset.elementId = problem.element_id || "";
      const where = problem.element_id ? `${problem.element_id}: ` : (problem.line ? `${problem.file}:${problem.line}: ` : "");
      if (problem.element_id && registry.get(problem.element_id)) {
        const link = document.createElement("button");
        link.type = "button";
        link.className = "link";
        link.textContent = `${where}${problem.message}`;
        link.addEventListener("click", () => {
          const element = registry.get(problem.element_id);
          selection.select(element);
          // A whole process fitted to the canvas is too small to read: zoom in on the step.
          if (canvas.zoom() < 0.8) canvas.zoom(1);
          canvas.scrollToElement(element);
        });
        item.append(link);
        if (!byElement.has(problem.element_id)) byElement.set(problem.element_id, []);
        byElement.get(problem.element_id).push(problem.message);
      } else {
        item.textContent = `${where}${problem.message}`;
      }
      list.append(item);
    }
    for (const [id, messages] of byElement) {
      canvas.addMarker(id, "bpm-lint-error");
      marked.push(id);
      const badge = document.createElement("span");
      badge.className = "bpm-lint-badge";
      badge.dataset.lintFor = id;
      badge.title = messages.join("\n");
      badge.setAttribute("role", "img");
      badge.setAttribute("aria-label", messages.join("; "));
      badge.textContent = `! ${messages.length}`;
      overlays.add(id, "server-lint", { position: { top: -10, right: 14 }, html: badge });
    }
  }

  async function send(url, { method = "POST", body, withEtag = false } = {}) {
    const headers = { "X-CSRFToken": csrf(), "Content-Type": "application/xml" };
    if (withEtag) headers["If-Match"] = root.dataset.etag;
    const answer = await fetch(url, { method, body, headers, credentials: "same-origin" });
    const data = await answer.json().catch(() => ({ message: String(answer.status) }));
    if (answer.headers.get("ETag")) root.dataset.etag = answer.headers.get("ETag");
    return { ok: answer.ok, status: answer.status, data };
  }

  async function save() {
    const { xml } = await modeler.saveXML({ format: true });
    const answer = await send(root.dataset.saveUrl, { method: "PUT", body: xml, withEtag: true });
    if (answer.ok) {
      state.textContent = answer.data.message;
    } else {
      say(answer.data.message, answer.status === 409 ? "warning" : "error");
      if (answer.data.problems) showProblems(answer.data.problems);
    }
    return answer.ok;
  }

  async function check() {
    say(root.dataset.textChecking);
    const { xml } = await modeler.saveXML({ format: true });
    const answer = await send(root.dataset.checkUrl, { body: xml });
    showProblems(answer.data.problems || []);
    say(answer.data.message, answer.ok && answer.data.ok ? null : "warning");
    root.dataset.checked = answer.ok && answer.data.ok ? "ok" : "problems";
  }

  async function deploy() {
    if (!(await save())) return;
    const answer = await send(root.dataset.deployUrl, { withEtag: true });
    showProblems(answer.data.problems || []);
    say(answer.data.message, answer.ok ? null : "warning");
    if (answer.ok) root.dataset.deployed = String(answer.data.version);
  }

  const actions = { save, check, deploy };
  root.querySelectorAll("[data-action]").forEach((button) => {
    button.addEventListener("click", () => {
      button.disabled = true;
      actions[button.dataset.action]()
        .catch((error) => say(String(error), "error"))
        .finally(() => { button.disabled = false; });
    });
  });
  root.dataset.ready = "true";
  // Other modules of the page (the comparison, diff.js) work on the same modeler.
  root.bpmModeler = modeler;
  root.dispatchEvent(new CustomEvent("bpm:modeler-ready", { detail: { modeler } }));
  const forms = root.querySelector("#draft-forms");
  await Promise.all([startLint(modeler, root), forms ? startForms(forms, root) : null]);
}

const root = document.getElementById("modeler");
if (root) {
  start(root).catch((error) => {
    root.dataset.ready = "error";
    root.querySelector("#draft-message").textContent = `${root.dataset.failed}: ${error}`;
  });
}
