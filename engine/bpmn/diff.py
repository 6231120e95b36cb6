"""What changed between two versions of a diagram, element by element, in words a process
owner reads: steps, events, gateways and sequence flows added, removed and changed (name,
type, lane, assignment, form key and the form's fields, due and follow-up dates, priority,
extension properties, timers, messages, conditions, where a flow goes).

The comparison reads the XML, not SpiffWorkflow's specs: sequence flows and their conditions,
and the Camunda attributes as the owner typed them, are what the owner changed; the layout
(``bpmndi``) is not compared. Elements are matched by id, as Camunda Modeler keeps them.
Every entry carries Chinese and English words (Chinese first on the pages).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from engine.bpmn.parser import SLA_POLICY, parse_xml

BPMN = "http://www.omg.org/spec/BPMN/20100524/MODEL"
CAMUNDA = "http://camunda.org/schema/1.0/bpmn"

# The elements a change is reported on: what a case passes through, and the flows between.
_FLOW_TAGS = ("task", "subProcess", "callActivity", "transaction", "sequenceFlow")
_TYPE_WORDS: dict[str, tuple[str, str]] = {
    "userTask": ("用户任务", "user task"), "serviceTask": ("服务任务", "service task"),
    "scriptTask": ("脚本任务", "script task"), "manualTask": ("人工任务", "manual task"),
    "receiveTask": ("接收任务", "receive task"), "sendTask": ("发送任务", "send task"),
    "businessRuleTask": ("业务规则任务", "business rule task"), "task": ("任务", "task"),
    "startEvent": ("开始事件", "start event"), "endEvent": ("结束事件", "end event"),
    "intermediateCatchEvent": ("中间捕获事件", "intermediate catch event"),
    "intermediateThrowEvent": ("中间抛出事件", "intermediate throw event"),
    "boundaryEvent": ("边界事件", "boundary event"),
    "exclusiveGateway": ("排他网关", "exclusive gateway"), "parallelGateway": ("并行网关", "parallel gateway"),
    "inclusiveGateway": ("包容网关", "inclusive gateway"), "eventBasedGateway": ("事件网关", "event-based gateway"),
    "subProcess": ("子流程", "subprocess"), "callActivity": ("调用活动", "call activity"),
    "transaction": ("事务子流程", "transaction"), "sequenceFlow": ("顺序流", "sequence flow"),
}
# What each compared field is called.
FIELD_WORDS: dict[str, tuple[str, str]] = {
    "type": ("类型", "type"), "name": ("名称", "name"), "lane": ("泳道", "lane"),
    "assignee": ("处理人", "assignee"), "candidateGroups": ("候选组", "candidate groups"),
    "candidateUsers": ("候选人", "candidate users"), "formKey": ("表单", "form"),
    "form": ("表单内容", "form fields"),
    "dueDate": ("到期时间", "due date"), "followUpDate": ("跟进时间", "follow-up date"),
    "priority": ("优先级", "priority"), "topic": ("服务主题", "service topic"),
    "timer": ("定时器", "timer"), "message": ("消息", "message"), "condition": ("条件", "condition"),
    "source": ("起点", "from"), "target": ("终点", "to"), "default": ("默认流", "default flow"),
    "attachedTo": ("附着于", "attached to"), "cancelActivity": ("中断", "interrupting"),
    "sla": ("SLA 策略", "SLA policy"), "calledElement": ("被调用流程", "called process"),
}


@dataclass(frozen=True)
class Words:
    zh: str
    en: str


@dataclass(frozen=True)
class FieldChange:
    field: str  # a FIELD_WORDS key, or "property:<name>" for an extension property
    before: str | None
    after: str | None
    # Said instead of "before → after" (a form's fields: what was added, removed, retyped).
    detail: Words | None = None

    def words(self) -> Words:
        if self.field.startswith("property:"):
            name = self.field.removeprefix("property:")
            label = Words(f"扩展属性 {name}", f"extension property {name}")
        else:
            zh, en = FIELD_WORDS.get(self.field, (self.field, self.field))
            label = Words(zh, en)
        if self.detail is not None:
            return Words(f"{label.zh} {self.before}：{self.detail.zh}", f"{label.en} {self.before}: {self.detail.en}")
        none_zh, none_en = "（无）", "(none)"
        return Words(f"{label.zh}：{self.before or none_zh} → {self.after or none_zh}",
                     f"{label.en}: {self.before or none_en} → {self.after or none_en}")


@dataclass(frozen=True)
class ElementChange:
    element_id: str
    kind: str  # added, removed, changed
    element_type: str  # the BPMN tag's local name
    name: str | None  # the name in the newer version (the older one's when removed)
    changes: tuple[FieldChange, ...] = ()

    def words(self) -> Words:
        type_zh, type_en = _TYPE_WORDS.get(self.element_type, (self.element_type, self.element_type))
        what_zh = f"{type_zh}「{self.name}」（{self.element_id}）" if self.name else f"{type_zh} {self.element_id}"
        what_en = f"{type_en} “{self.name}” ({self.element_id})" if self.name else f"{type_en} {self.element_id}"
        if self.kind == "added":
            return Words(f"新增{what_zh}", f"Added {what_en}")
        if self.kind == "removed":
            return Words(f"删除{what_zh}", f"Removed {what_en}")
        details = [c.words() for c in self.changes]
        return Words(f"修改{what_zh}：" + "；".join(d.zh for d in details),
                     f"Changed {what_en}: " + "; ".join(d.en for d in details))


@dataclass
class VersionDiff:
    process_key: str
    changes: list[ElementChange] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[ElementChange]:
        return [c for c in self.changes if c.kind == kind]

    def by_element(self) -> dict[str, ElementChange]:
        return {c.element_id: c for c in self.changes}


# (element id, lane name, the policy the step names in its slaPolicy property) -> the SLA
# policy keys that would time the step, in the order they are tried; given by the caller,
# who has the policies.
PolicyLookup = Callable[[str, str | None, str | None], list[str]]


def compare(process_key: str, before_xml: str | bytes, after_xml: str | bytes, *,
            before_forms: dict[str, Any] | None = None, after_forms: dict[str, Any] | None = None,
            policies: PolicyLookup | None = None) -> VersionDiff:
    """The elements of process ``process_key`` added, removed and changed from ``before`` to
    ``after``, in document order (removed ones after, in their old order)."""
    old = _elements(before_xml, process_key)
    new = _elements(after_xml, process_key)
    diff = VersionDiff(process_key)
    for element_id, facts in new.items():
        if element_id not in old:
            diff.changes.append(ElementChange(element_id, "added", facts["type"], facts.get("name")))
            continue
        changes = _field_changes(old[element_id], facts)
        form_key = facts.get("formKey")
        if form_key and form_key == old[element_id].get("formKey") and before_forms is not None \
                and after_forms is not None:
            form_words = form_changes(before_forms.get(form_key), after_forms.get(form_key))
            if form_words:
                changes.append(FieldChange("form", form_key, form_key, Words(
                    "；".join(w.zh for w in form_words), "; ".join(w.en for w in form_words))))
        if policies is not None and facts["type"] == "userTask":
            before = old[element_id]
            was = ", ".join(policies(element_id, before.get("lane"), before.get(f"property:{SLA_POLICY}"))) or None
            now = ", ".join(policies(element_id, facts.get("lane"), facts.get(f"property:{SLA_POLICY}"))) or None
            if was != now:
                changes.append(FieldChange("sla", was, now))
        if changes:
            diff.changes.append(ElementChange(element_id, "changed", facts["type"], facts.get("name"),
                                              tuple(changes)))
    for element_id, facts in old.items():
        if element_id not in new:
            diff.changes.append(ElementChange(element_id, "removed", facts["type"], facts.get("name")))
    return diff


def _field_changes(old: dict[str, Any], new: dict[str, Any]) -> list[FieldChange]:
    changes = []
    for key in dict.fromkeys([*old, *new]):
        if old.get(key) != new.get(key):
            changes.append(FieldChange(key, old.get(key), new.get(key)))
    return changes


def _local(tag: Any) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def _is_flow_element(element: etree._Element) -> bool:
    if not isinstance(element.tag, str) or etree.QName(element).namespace != BPMN or not element.get("id"):
        return False
    name = _local(element.tag)
    return name.endswith(("Task", "Event", "Gateway")) or name in _FLOW_TAGS


def _text(element: etree._Element | None) -> str | None:
    if element is None:
        return None
    text = " ".join("".join(element.itertext()).split())
    return text or None


def _elements(xml: str | bytes, process_key: str) -> dict[str, dict[str, Any]]:
    data = xml.encode("utf-8") if isinstance(xml, str) else xml
    root = parse_xml(data, f"{process_key}.bpmn").getroot()
    process = next((p for p in root.iter(f"{{{BPMN}}}process") if p.get("id") == process_key), None)
    if process is None:
        return {}
    messages = {m.get("id"): m.get("name") or m.get("id") for m in root.iter(f"{{{BPMN}}}message")}
    lanes = {ref.text.strip(): lane.get("name") or lane.get("id")
             for lane in process.iter(f"{{{BPMN}}}lane")
             for ref in lane.findall(f"{{{BPMN}}}flowNodeRef") if ref.text}
    found: dict[str, dict[str, Any]] = {}
    for element in process.iter():
        if element is process or not _is_flow_element(element):
            continue
        element_id = element.get("id")
        facts: dict[str, Any] = {"type": _local(element.tag), "name": element.get("name") or None}
        if element_id in lanes:
            facts["lane"] = lanes[element_id]
        for attribute, value in sorted(element.attrib.items()):
            qname = etree.QName(attribute)
            if qname.namespace == CAMUNDA:
                facts[qname.localname] = value.strip() or None
        for prop in element.iterfind(f"{{{BPMN}}}extensionElements/{{{CAMUNDA}}}properties/{{{CAMUNDA}}}property"):
            facts[f"property:{prop.get('name')}"] = prop.get("value")
        timer = element.find(f"{{{BPMN}}}timerEventDefinition")
        if timer is not None:
            facts["timer"] = "; ".join(f"{_local(child.tag)} {_text(child)}" for child in timer
                                       if isinstance(child.tag, str)) or None
        message = element.find(f"{{{BPMN}}}messageEventDefinition")
        ref = message.get("messageRef") if message is not None else element.get("messageRef")
        if ref:
            facts["message"] = messages.get(ref, ref)
        if facts["type"] == "sequenceFlow":
            facts["source"] = element.get("sourceRef")
            facts["target"] = element.get("targetRef")
            facts["condition"] = _text(element.find(f"{{{BPMN}}}conditionExpression"))
        if element.get("default"):
            facts["default"] = element.get("default")
        if facts["type"] == "boundaryEvent":
            facts["attachedTo"] = element.get("attachedToRef")
            facts["cancelActivity"] = element.get("cancelActivity", "true")
        if facts["type"] == "callActivity":
            facts["calledElement"] = element.get("calledElement")
        found[element_id] = {k: v for k, v in facts.items() if v is not None}
    return found


def form_changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[Words]:
    """A form's fields added, removed, retyped, newly required or optional."""
    if before == after:
        return []
    if before is None or after is None:
        return [Words("表单新增", "form added") if before is None else Words("表单已删除", "form removed")]
    old_fields = dict(before.get("properties") or {})
    new_fields = dict(after.get("properties") or {})
    old_required = set(before.get("required") or [])
    new_required = set(after.get("required") or [])
    words = [Words(f"新增字段 {n}" + ("（必填）" if n in new_required else ""),
                   f"field {n} added" + (" (required)" if n in new_required else ""))
             for n in new_fields if n not in old_fields]
    words += [Words(f"删除字段 {n}", f"field {n} removed") for n in old_fields if n not in new_fields]
    words += [Words(f"字段 {n} 类型 {old_fields[n].get('type')} → {new_fields[n].get('type')}",
                    f"field {n} type {old_fields[n].get('type')} → {new_fields[n].get('type')}")
              for n in retyped_fields(before, after)]
    words += [Words(f"字段 {n} 改为必填", f"field {n} now required")
              for n in sorted(new_required - old_required) if n in old_fields]
    words += [Words(f"字段 {n} 改为选填", f"field {n} now optional")
              for n in sorted(old_required - new_required) if n in new_fields]
    return words or [Words("表单的其他设置已修改", "other settings of the form changed")]


def retyped_fields(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """The fields both forms have whose JSON type differs: what a person already entered (a
    saved draft, the case's data) was written for the old type."""
    old_fields = (before or {}).get("properties") or {}
    new_fields = (after or {}).get("properties") or {}
    return [n for n in new_fields if n in old_fields and isinstance(old_fields[n], dict)
            and isinstance(new_fields[n], dict) and old_fields[n].get("type") != new_fields[n].get("type")]
