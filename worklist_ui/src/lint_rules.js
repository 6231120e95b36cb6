// bpmnlint rules for what this engine requires, run in the browser while the owner draws:
// the early warning. The server's deploy check (Check, Deploy) stays the authority and says
// the same things. The names a diagram may use (candidate groups, service topics, SLA policy
// keys, the draft's forms) come from the server into `context`; an expression is judged by
// the server's safe evaluator, whose verdicts are cached here (an expression not yet judged
// is queued in `context.pending` and the lint runs again once the verdicts arrive).
import { is, isAny } from "bpmnlint-utils";

export const context = {
  loaded: false,
  chinese: true,
  groups: new Set(),
  groupPrefixes: ["branch:", "client:"],
  topics: new Set(),
  policies: new Set(),
  forms: new Set(),
  allowScripts: false,
  verdicts: new Map(), // expression -> null (allowed) or the reason it is refused
  pending: new Set(),
};

const t = (zh, en) => (context.chinese ? zh : en);
const isExpression = (text) => /^\s*[$#]\{/.test(text || "");

function extensionValues(node, type) {
  const values = (node.extensionElements && node.extensionElements.values) || [];
  return values.filter((value) => is(value, type));
}

function properties(node) {
  const found = {};
  for (const list of extensionValues(node, "camunda:Properties")) {
    for (const property of list.values || []) found[property.name] = property.value;
  }
  return found;
}

function laneOf(node) {
  let process = node.$parent;
  while (process && !is(process, "bpmn:Process")) process = process.$parent;
  let found = null;
  const visit = (laneSets) => {
    for (const set of laneSets || []) {
      for (const lane of set.lanes || []) {
        if ((lane.flowNodeRef || []).includes(node)) found = lane;
        if (lane.childLaneSet) visit([lane.childLaneSet]);
      }
    }
  };
  if (process) visit(process.laneSets);
  return found;
}

function candidateGroups(node) {
  const raw = node.get("camunda:candidateGroups");
  if (raw) return raw.split(",").map((g) => g.trim()).filter(Boolean);
  const lane = laneOf(node);
  return lane && lane.name ? [lane.name] : [];
}

function rule(check) {
  return () => ({ check });
}

// A user task must be offered to someone: a lane, candidate groups or users, or an assignee.
const userTaskCandidates = rule((node, reporter) => {
  if (!is(node, "bpmn:UserTask")) return;
  if (candidateGroups(node).length || node.get("camunda:candidateUsers") || node.get("camunda:assignee")) return;
  reporter.report(node.id, t("用户任务没有泳道、候选组、候选人或处理人：没有人能看到它",
    "user task has no lane, candidate groups, candidate users or assignee: nobody could ever see it"));
});

// Every user task has a form, and the form is one of the draft's forms.
const formKey = rule((node, reporter) => {
  if (!is(node, "bpmn:UserTask")) return;
  const key = node.get("camunda:formKey");
  if (!key) {
    reporter.report(node.id, t("用户任务没有表单：请填写表单键（草稿表单之一）",
      "user task has no form: set the form key to one of the draft's forms"));
  } else if (context.loaded && !context.forms.has(key)) {
    reporter.report(node.id, t(`表单 ${key} 不在草稿的表单中：请在“表单”中添加或改正表单键`,
      `form ${key} is not one of the draft's forms: add it under Forms or fix the form key`));
  }
});

// Candidate groups (and lanes standing for them) must exist; expressions and branch:/client:
// groups are resolved per case.
const candidateGroupKnown = rule((node, reporter) => {
  if (!is(node, "bpmn:UserTask") || !context.loaded) return;
  for (const group of candidateGroups(node)) {
    if (isExpression(group) || context.groupPrefixes.some((prefix) => group.startsWith(prefix))) continue;
    if (!context.groups.has(group)) {
      reporter.report(node.id, t(`候选组 ${group} 不存在：请先创建该组或改正候选组/泳道`,
        `candidate group ${group} does not exist: create it or fix the candidate groups/lane`));
    }
  }
});

// Diagrams may not run code: no script tasks, no scripts in listeners.
const noScript = rule((node, reporter) => {
  if (context.allowScripts) return;
  const words = t("不允许脚本：流程图不能运行代码，请让开发人员提供服务任务函数",
    "scripts are not allowed: diagrams may not run code; ask a developer for a service task function");
  if (is(node, "bpmn:ScriptTask")) reporter.report(node.id, words);
  const listeners = [...extensionValues(node, "camunda:ExecutionListener"),
    ...extensionValues(node, "camunda:TaskListener")];
  if (node.id && listeners.some((listener) => listener.script)) reporter.report(node.id, words);
});

const DURATION = /^P(?!$)(\d+(\.\d+)?Y)?(\d+(\.\d+)?M)?(\d+(\.\d+)?W)?(\d+(\.\d+)?D)?(T(?=\d)(\d+(\.\d+)?H)?(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?$/;
const MOMENT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?$/;

function timerProblem(kind, raw) {
  const text = (raw || "").trim().replace(/^(["'])(.*)\1$/, "$2");
  if (!text) return t("定时器没有值", "the timer has no value");
  const iso = t("不是 ISO 8601（例如 PT4H、P15D、R3/PT1H、2026-12-01T09:00:00+08:00）；表达式请写成 ${…}",
    "not ISO 8601 (examples: PT4H, P15D, R3/PT1H, 2026-12-01T09:00:00+08:00); wrap an expression in ${...}");
  if (kind === "timeDuration") return DURATION.test(text) ? null : `${text}: ${iso}`;
  if (kind === "timeCycle") {
    const parts = text.split("/");
    const ok = /^R\d*$/.test(parts[0]) && parts.length >= 2 && parts.slice(1).every((p) => DURATION.test(p) || MOMENT.test(p));
    return ok ? null : `${text}: ${iso}`;
  }
  if (!MOMENT.test(text)) return `${text}: ${iso}`;
  if (!/(Z|[+-]\d{2}:?\d{2})$/.test(text)) {
    return t(`定时日期 ${text} 没有时区：请写成 ${text}+08:00`, `timer date ${text} has no UTC offset: write ${text}+08:00`);
  }
  return null;
}

// A timer's literal must be ISO 8601 (dates with their offset); anything else must be an
// expression in ${…} (which the server judges, below).
const timer = rule((node, reporter) => {
  if (!is(node, "bpmn:TimerEventDefinition")) return;
  const owner = node.$parent;
  const kinds = ["timeDuration", "timeDate", "timeCycle"].filter((kind) => node[kind]);
  if (!kinds.length) {
    reporter.report(owner.id, t("定时器没有值：请填写时长、日期或周期", "the timer has no duration, date or cycle"));
    return;
  }
  for (const kind of kinds) {
    const body = node[kind].body;
    if (isExpression(body)) continue;
    const problem = timerProblem(kind, body);
    if (problem) reporter.report(owner.id, problem);
  }
});

// A service task calls a function the server has registered, by its topic.
const serviceTopic = rule((node, reporter) => {
  if (!is(node, "bpmn:ServiceTask")) return;
  const topic = node.get("camunda:topic");
  if (!topic) {
    reporter.report(node.id, t("服务任务没有主题：请设 camunda:type=external 并填写主题（已登记的函数）",
      "service task has no topic: set camunda:type external and a registered topic"));
  } else if (context.loaded && !context.topics.has(topic)) {
    reporter.report(node.id, t(`服务任务主题 ${topic} 未登记；已登记：${[...context.topics].join("、")}`,
      `service task topic ${topic} is not registered; known: ${[...context.topics].join(", ")}`));
  }
});

function expressionsOf(node) {
  const found = [];
  if (is(node, "bpmn:SequenceFlow") && node.conditionExpression && node.conditionExpression.body) {
    found.push(node.conditionExpression.body);
  }
  if (is(node, "bpmn:UserTask")) {
    for (const attr of ["assignee", "dueDate", "followUpDate", "priority"]) {
      const value = node.get(`camunda:${attr}`);
      if (isExpression(value)) found.push(value);
    }
    for (const group of candidateGroups(node)) if (isExpression(group)) found.push(group);
  }
  if (isAny(node, ["bpmn:ServiceTask", "bpmn:SendTask"])) {
    for (const io of extensionValues(node, "camunda:InputOutput")) {
      for (const parameter of io.inputParameters || []) if (parameter.value) found.push(parameter.value);
    }
  }
  if (isAny(node, ["bpmn:Event"])) {
    for (const definition of node.eventDefinitions || []) {
      if (!is(definition, "bpmn:TimerEventDefinition")) continue;
      for (const kind of ["timeDuration", "timeDate", "timeCycle"]) {
        const body = definition[kind] && definition[kind].body;
        if (isExpression(body)) found.push(body.trim());
      }
    }
  }
  return found;
}

// Every expression must pass the server's safe evaluator (the check the deploy runs).
const safeExpression = rule((node, reporter) => {
  for (const expression of expressionsOf(node)) {
    const verdict = context.verdicts.get(expression);
    if (verdict === undefined) context.pending.add(expression);
    else if (verdict) reporter.report(node.id, t(`表达式被拒绝：${verdict}`, `expression refused: ${verdict}`));
  }
});

// A step that names its SLA policy (extension property slaPolicy) names one that exists.
const slaPolicy = rule((node, reporter) => {
  if (!is(node, "bpmn:FlowNode") || !context.loaded) return;
  const key = properties(node).slaPolicy;
  if (key !== undefined && !context.policies.has(key)) {
    reporter.report(node.id, t(`SLA 策略 ${key} 不存在（或未启用）`, `SLA policy ${key} does not exist or is not active`));
  }
});

export const RULES = {
  "user-task-candidates": userTaskCandidates,
  "form-key": formKey,
  "candidate-group": candidateGroupKnown,
  "no-script": noScript,
  timer,
  "service-topic": serviceTopic,
  "safe-expression": safeExpression,
  "sla-policy": slaPolicy,
};
