#!/usr/bin/env node
// Runs the draft editor's lint rules (src/lint_rules.js) without a browser, as
// bpmn-js-bpmnlint runs them: bpmnlint's Linter over bpmn-moddle with the camunda: descriptors.
// tests/ui/test_lint_rules.py drives it, rule by rule and over every workflows/*.bpmn.
//
// Reads {"context": {groups, topics, policies, forms, verdicts: {expression: reason|null}},
// "diagrams": {name: xml}} on standard input; prints {name: {issues: {element: [message]},
// pending: [expressions the server was not asked about]}}.
import { createRequire } from "node:module";

import { BpmnModdle } from "bpmn-moddle";

import { RULES, context } from "../src/lint_rules.js";

const require = createRequire(import.meta.url);
const camunda = require("camunda-bpmn-moddle/resources/camunda.json");
const { Linter } = require("bpmnlint");
const StaticResolver = require("bpmnlint/lib/resolver/static-resolver");

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const input = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const given = input.context;
Object.assign(context, {
  loaded: true, chinese: false, groups: new Set(given.groups), topics: new Set(given.topics),
  policies: new Set(given.policies), forms: new Set(given.forms), allowScripts: false,
  verdicts: new Map(Object.entries(given.verdicts || {})),
});

const rules = {};
const cache = {};
for (const [name, factory] of Object.entries(RULES)) {
  rules[`brokerage/${name}`] = "error";
  cache[`rule:bpmnlint-plugin-brokerage/${name}`] = factory;
}
const linter = new Linter({ config: { rules }, resolver: new StaticResolver(cache) });
const moddle = new BpmnModdle({ camunda });
const out = {};
for (const [name, xml] of Object.entries(input.diagrams)) {
  context.pending = new Set();
  const { rootElement } = await moddle.fromXML(xml);
  const reports = await linter.lint(rootElement);
  const issues = {};
  for (const list of Object.values(reports)) {
    for (const report of list) (issues[report.id] ||= []).push(report.message);
  }
  out[name] = { issues, pending: [...context.pending].sort() };
}
process.stdout.write(JSON.stringify(out));
