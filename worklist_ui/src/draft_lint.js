// Lint while drawing: bpmn-js-bpmnlint runs the engine's rules (lint_rules.js) on every change
// and marks each element with its problems. The lists the rules check names against come
// from the server once the editor opens (and again when a form is added); expressions the
// rules meet are sent to the server's safe evaluator in one call, and the lint runs again
// with its verdicts.
import lintModule from "bpmn-js-bpmnlint";
import StaticResolver from "bpmnlint/lib/resolver/static-resolver";
import "bpmn-js-bpmnlint/dist/assets/css/bpmn-js-bpmnlint.css";
import { RULES, context } from "./lint_rules.js";

export const lintModules = [lintModule];

export function lintConfig() {
  const rules = {};
  const cache = {};
  for (const [name, factory] of Object.entries(RULES)) {
    rules[`brokerage/${name}`] = "error";
    cache[`rule:bpmnlint-plugin-brokerage/${name}`] = factory;
  }
  return { config: { rules }, resolver: new StaticResolver(cache) };
}

function csrf() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

export async function startLint(modeler, root) {
  const linting = modeler.get("linting");
  context.chinese = root.dataset.chinese === "true";
  const answer = await fetch(root.dataset.lintContextUrl, { credentials: "same-origin" });
  if (!answer.ok) throw new Error(`lint: ${answer.status}`);
  const data = await answer.json();
  context.groups = new Set(data.groups);
  context.groupPrefixes = data.group_prefixes;
  context.topics = new Set(data.topics);
  context.policies = new Set(data.policies);
  context.forms = new Set(data.forms);
  context.allowScripts = data.allow_scripts;
  context.loaded = true;

  let asking = false;
  modeler.on("linting.completed", async (event) => {
    root.dataset.lintIssues = String(Object.keys(event.issues).length);
    if (!context.pending.size || asking) return;
    const expressions = [...context.pending];
    context.pending.clear();
    asking = true;
    try {
      const verdicts = await fetch(root.dataset.expressionsUrl, {
        method: "POST", credentials: "same-origin", body: JSON.stringify({ expressions }),
        headers: { "Content-Type": "application/json", "X-CSRFToken": csrf() },
      }).then((r) => r.json());
      for (const expression of expressions) context.verdicts.set(expression, verdicts.verdicts[expression] ?? null);
    } finally {
      asking = false;
    }
    linting.update();
  });
  document.addEventListener("bpm:draft-forms", (event) => {
    context.forms = new Set(event.detail.forms);
    linting.update();
  });
  linting.setLinterConfig(lintConfig());
  root.dataset.lintReady = "true";
}
