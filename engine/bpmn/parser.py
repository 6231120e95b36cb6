"""Reading diagrams: hostile-XML-safe parsing, Camunda attributes, one spec per process.

Process owners draw in Camunda Modeler (and, later, the product's browser modeler, built on
the same properties panel), so the contract is
Camunda 7's extension attributes (``camunda:candidateGroups``, ``camunda:assignee``,
``camunda:formKey``, ``camunda:dueDate``, ``camunda:followUpDate``, ``camunda:priority``,
``camunda:properties``, and ``camunda:topic`` on external service tasks). SpiffWorkflow's
parser ignores them; the task parsers below copy them into ``task_spec.extensions``, which
SpiffWorkflow serializes with the spec.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from lxml import etree
from SpiffWorkflow.bpmn.parser.BpmnParser import full_tag
from SpiffWorkflow.bpmn.parser.ValidationException import ValidationException
from SpiffWorkflow.bpmn.specs.bpmn_process_spec import BpmnProcessSpec
from SpiffWorkflow.bpmn.specs.event_definitions.timer import (
    CycleTimerEventDefinition,
    DurationTimerEventDefinition,
    TimeDateEventDefinition,
    TimerEventDefinition,
)
from SpiffWorkflow.spiff.parser.process import VALIDATOR, SpiffBpmnParser
from SpiffWorkflow.spiff.parser.task_spec import SpiffTaskParser
from SpiffWorkflow.spiff.specs.defaults import ManualTask, NoneTask, ServiceTask, UserTask

from engine.bpmn.expressions import unwrap
from engine.errors import Problem

CAMUNDA_NS = "http://camunda.org/schema/1.0/bpmn"
_CAMUNDA_TASK_ATTRIBUTES = (
    "assignee", "candidateGroups", "candidateUsers", "formKey", "dueDate", "followUpDate",
    "priority",
)
MAX_BPMN_BYTES = 5 * 1024 * 1024


class RegistryServiceTask(ServiceTask):  # type: ignore[misc]
    """A service task that calls a registered Python function (see engine.service_tasks).

    The result is merged into the task data, or stored under ``camunda:resultVariable``.
    """

    def _execute(self, my_task: Any) -> bool:
        service = self.extensions.get("service", {})
        params = {k: {"value": v, "type": "any"} for k, v in self.evaluate_params(my_task).items()}
        result = my_task.workflow.script_engine.call_service(
            my_task, operation_name=self.operation_name, operation_params=params
        )
        if service.get("result_variable"):
            my_task.data[service["result_variable"]] = result
        elif isinstance(result, dict):
            my_task.data.update(result)
        return True

    def evaluate_params(self, my_task: Any) -> dict[str, Any]:
        engine = my_task.workflow.script_engine
        return {name: engine.evaluate(my_task, expr) for name, expr in self.operation_params.items()}


def camunda_of(task_spec: Any) -> dict[str, str]:
    """The Camunda attributes a task parser kept (empty for SpiffWorkflow's own specs)."""
    return (getattr(task_spec, "extensions", None) or {}).get("camunda", {})


def properties_of(task_spec: Any) -> dict[str, str]:
    """The ``camunda:properties`` of a task (``excludeUsers``, ``completedByVariable``, …)."""
    return (getattr(task_spec, "extensions", None) or {}).get("properties", {})


# Task properties the engine acts on (see docs/diagrams.md).
EXCLUDE_USERS, EXCLUDE_GROUPS, COMPLETED_BY_VARIABLE = "excludeUsers", "excludeGroups", "completedByVariable"
# Usernames whose service groups are recused too (a complaint's subject and their group).
EXCLUDE_SERVICE_GROUPS_OF = "excludeServiceGroupsOf"
# Usernames kept off this step only, whatever its recusalScope: separation of duties on a step
# that also recuses case-wide (the approver of a complaint is neither its investigator nor the
# one who proposed the resolution, who still handle the case).
SEPARATE_FROM = "separateFrom"
# Candidate groups that take the step when its own candidates, less those excluded, leave no
# active person (a branch whose only head also investigated: the approval goes up a level).
CANDIDATE_GROUPS_IF_NONE = "candidateGroupsIfNone"
_SEVERAL_EXPRESSIONS = re.compile(r"^\s*[$#]\{[^{}]*\}(\s*,\s*[$#]\{[^{}]*\})+\s*$")
_ONE_EXPRESSION = re.compile(r"[$#]\{[^{}]*\}")


def writable_variables(task_spec: Any) -> set[str]:
    """The names a task's ``writesEngineVariables`` property lists (comma-separated)."""
    raw = properties_of(task_spec).get(WRITES_ENGINE_VARIABLES) or ""
    return {name.strip() for name in raw.split(",") if name.strip()}


def exclusion_parts(raw: str) -> list[str]:
    """An exclusion property may list several expressions, ``${first_contact_owner},
    ${subject_staff_ids}``: each is evaluated on its own, so an unset one (no staff subject)
    excludes nobody instead of failing the whole list. Anything else is one value."""
    raw = raw.strip()
    return _ONE_EXPRESSION.findall(raw) if _SEVERAL_EXPRESSIONS.match(raw) else [raw] if raw else []


# On a user task: the key of the SLA policy that times it, chosen in the diagram instead of by
# the policies' matching rules (process, step, lane, priority, case data). A policy that has
# been deactivated since falls back to those rules; the deploy refuses a key no active policy has.
SLA_POLICY = "slaPolicy"
# On a message catch event or receive task: the payload fields that become case variables.
PAYLOAD_VARIABLES = "payloadVariables"
# On a message catch event or receive task: a form of the bundle the payload must satisfy, so
# an outside system's bad message is refused (422, every problem listed) instead of running
# the case on it.
PAYLOAD_FORM = "payloadForm"
# On a non-interrupting boundary message event: it waits again after it fired, as long as its
# activity runs (BPMN's semantics; SpiffWorkflow fires such an event once): a client may chase
# a complaint, or send new evidence, more than once.
REPEATABLE = "repeatable"
# On a service task: the variables it sets that hold for the whole case, not only its own
# branch (a non-interrupting boundary event's branch re-classifies the case the main path is
# working on): the engine copies them into every step still holding the case's data.
CASE_VARIABLES = "caseVariables"
# How far a task's exclusions reach: "task" (the default; separation of duties: QA is not the
# caller, the approver not the nominator, who may still follow the case) or "case" (recusal
# of a complaint's subject: they cannot read the case either, docs/domain.md#separation-of-duties).
RECUSAL_SCOPE, RECUSAL_SCOPES = "recusalScope", ("task", "case")
# On a user task: the engine's own case variables this step is the authority for, so its form
# may change them (a risk re-assessment sets a new ``risk_level``). Only the facts a step can
# re-assess: the client, branch and service group a case is about, where it came from and who
# did a step decide who sees and handles it and are never a form's to change.
WRITES_ENGINE_VARIABLES = "writesEngineVariables"
STEP_WRITABLE_VARIABLES = frozenset({"client_class", "vip_tier", "risk_level"})
# Process properties (see docs/diagrams.md and docs/figures.md).
REPORT_VARIABLES, BUSINESS_KEY_FORMAT = "reportVariables", "businessKeyFormat"


def _camunda_attributes(node: etree._Element) -> dict[str, str]:
    return {
        name: node.get(f"{{{CAMUNDA_NS}}}{name}")
        for name in _CAMUNDA_TASK_ATTRIBUTES
        if node.get(f"{{{CAMUNDA_NS}}}{name}") is not None
    }


def _camunda_properties(node: etree._Element) -> dict[str, str]:
    props = node.xpath(
        "./bpmn:extensionElements/camunda:properties/camunda:property",
        namespaces={"bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL", "camunda": CAMUNDA_NS},
    )
    return {p.get("name"): p.get("value", "") for p in props if p.get("name")}


class CamundaTaskParser(SpiffTaskParser):  # type: ignore[misc]
    """Adds Camunda attributes and properties to SpiffWorkflow's extensions."""

    def parse_extensions(self, node: etree._Element | None = None) -> dict[str, Any]:
        node = self.node if node is None else node
        extensions: dict[str, Any] = SpiffTaskParser._parse_extensions(node)
        camunda = _camunda_attributes(node)
        if camunda:
            extensions["camunda"] = camunda
        properties = _camunda_properties(node)
        if properties:
            extensions.setdefault("properties", {}).update(properties)
        return extensions


class RegistryServiceTaskParser(CamundaTaskParser):
    def create_task(self) -> Any:
        topic = self.node.get(f"{{{CAMUNDA_NS}}}topic")
        if not topic:
            raise ValidationException(
                "a service task must name a registered function with "
                'camunda:type="external" camunda:topic="<name>"',
                node=self.node, file_name=self.filename,
            )
        params = {}
        for param in self.xpath(
            "./bpmn:extensionElements/camunda:inputOutput/camunda:inputParameter"
        ):
            params[param.get("name")] = (param.text or "").strip()
        return self.spec_class(
            self.spec, self.bpmn_id, operation_name=topic, operation_params=params,
            result_variable=self.node.get(f"{{{CAMUNDA_NS}}}resultVariable") or "",
            **self.bpmn_attributes,
        )

    def parse_extensions(self, node: etree._Element | None = None) -> dict[str, Any]:
        extensions = super().parse_extensions(node)
        extensions["service"] = {
            "topic": self.node.get(f"{{{CAMUNDA_NS}}}topic"),
            "result_variable": self.node.get(f"{{{CAMUNDA_NS}}}resultVariable"),
        }
        return extensions


def _with_camunda_properties(tag: str) -> tuple[type, type]:
    """SpiffWorkflow's own parser for ``tag``, reading ``camunda:properties`` as well (a
    message catch event's ``payloadVariables``)."""
    parser_class, spec_class = SpiffBpmnParser.OVERRIDE_PARSER_CLASSES[full_tag(tag)]
    wrapped = type(f"Camunda{parser_class.__name__}", (parser_class,),
                   {"parse_extensions": CamundaTaskParser.parse_extensions})
    return wrapped, spec_class


class ProductParser(SpiffBpmnParser):  # type: ignore[misc]
    OVERRIDE_PARSER_CLASSES: ClassVar[dict[str, tuple[type, type]]] = {
        **SpiffBpmnParser.OVERRIDE_PARSER_CLASSES,
        **{full_tag(tag): _with_camunda_properties(tag)
           for tag in ("receiveTask", "intermediateCatchEvent", "boundaryEvent", "startEvent")},
        full_tag("userTask"): (CamundaTaskParser, UserTask),
        full_tag("task"): (CamundaTaskParser, NoneTask),
        full_tag("manualTask"): (CamundaTaskParser, ManualTask),
        full_tag("serviceTask"): (RegistryServiceTaskParser, RegistryServiceTask),
    }

    def __init__(self) -> None:
        namespaces = dict(SpiffBpmnParser().namespaces)
        namespaces["camunda"] = CAMUNDA_NS
        super().__init__(namespaces=namespaces, validator=VALIDATOR)


# -- XML ----------------------------------------------------------------------------------
_SAFE_XML = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
    huge_tree=False, remove_pis=True,
)


def parse_xml(data: bytes, filename: str) -> etree._ElementTree:
    """Parse untrusted XML: no DTD, no entities, no network, bounded size.

    A DOCTYPE has no place in BPMN; refusing it outright closes the XML-bomb and
    external-entity doors whatever lxml's defaults become.
    """
    if len(data) > MAX_BPMN_BYTES:
        raise _problem(filename, None, None, f"file is larger than {MAX_BPMN_BYTES} bytes")
    try:
        tree = etree.ElementTree(etree.fromstring(data, parser=_SAFE_XML))
    except etree.XMLSyntaxError as exc:
        raise _problem(filename, exc.lineno, None, f"not well-formed XML: {exc.msg}") from None
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise _problem(filename, 1, None, "DOCTYPE declarations are not allowed in BPMN files")
    return tree


class ParseFailure(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.format())
        self.problem = problem


def _problem(file: str, line: int | None, element: str | None, message: str) -> ParseFailure:
    return ParseFailure(Problem(file=file, line=line, element_id=element, message=message))


# -- Specs --------------------------------------------------------------------------------
@dataclass
class ParsedProcess:
    key: str
    name: str | None
    source_file: str
    xml: str
    spec: BpmnProcessSpec
    subprocess_specs: dict[str, BpmnProcessSpec]
    lines: dict[str, int] = field(default_factory=dict)
    starter_groups: list[str] = field(default_factory=list)
    # Process property reportVariables: variables copied to the instance's facts on every
    # save, so supervisors' figures are SQL over rows, never a deserialization per case.
    report_variables: list[str] = field(default_factory=list)
    business_key_format: str | None = None
    # The other files of the bundle holding processes this one calls (file name -> XML):
    # their specs are frozen into this process's version, so a change to one is a change
    # to this process too.
    called_xml: dict[str, str] = field(default_factory=dict)


def element_lines(tree: etree._ElementTree) -> dict[str, int]:
    return {el.get("id"): el.sourceline for el in tree.iter() if isinstance(el.tag, str)
            and el.get("id")}


def parse_files(files: dict[str, bytes]) -> tuple[list[ParsedProcess], list[Problem]]:
    """Parse every file of a bundle together (call activities may cross files)."""
    parser = ProductParser()
    problems: list[Problem] = []
    trees: dict[str, etree._ElementTree] = {}
    for filename, data in sorted(files.items()):
        tree = None
        try:
            tree = parse_xml(data, filename)
            parser.add_bpmn_xml(tree, filename=filename)
            trees[filename] = tree
        except ParseFailure as exc:
            problems.append(exc.problem)
        except ValidationException as exc:
            problems.append(_validation_problem(exc, filename, tree))
        except Exception as exc:  # noqa: BLE001 - the library crashes on odd input
            # SpiffWorkflow raises TypeError/KeyError on some valid-but-unusual BPMN; the
            # author still needs a located, readable message rather than a stack trace.
            problems.append(Problem(filename, None, None,
                                    f"cannot parse: {type(exc).__name__}: {exc}"))
    if problems:
        return [], problems

    processes: list[ParsedProcess] = []
    for process_id in parser.get_process_ids():
        process_parser = parser.get_process_parser(process_id)
        filename = process_parser.filename
        if process_parser.node.tag != full_tag("process"):
            continue  # an embedded subprocess: part of its parent's spec
        try:
            spec = parser.get_spec(process_id)
            subprocess_specs = parser.get_subprocess_specs(process_id)
        except ValidationException as exc:
            problems.append(_validation_problem(exc, filename, trees.get(exc.file_name or filename)))
            continue
        except Exception as exc:  # noqa: BLE001 - see above
            problems.append(Problem(filename, None, process_id,
                                    f"cannot build the process: {type(exc).__name__}: {exc}"))
            continue
        tree = trees[filename]
        processes.append(ParsedProcess(
            key=process_id,
            name=process_parser.node.get("name"),
            source_file=filename,
            xml=files[filename].decode("utf-8"),
            spec=spec,
            subprocess_specs=subprocess_specs,
            lines=element_lines(tree),
            starter_groups=[g.strip() for g in
                            (process_parser.node.get(f"{{{CAMUNDA_NS}}}candidateStarterGroups") or "").split(",")
                            if g.strip()],
            report_variables=[v.strip() for v in
                              _camunda_properties(process_parser.node).get(REPORT_VARIABLES, "").split(",")
                              if v.strip()],
            business_key_format=_camunda_properties(process_parser.node).get(BUSINESS_KEY_FORMAT) or None,
            called_xml={name: files[name].decode("utf-8") for name in sorted(_called_files(parser, subprocess_specs))
                        if name != filename},
        ))
    if not processes and not problems:
        problems.append(Problem(sorted(files)[0] if files else "-", None, None,
                                "no executable process (isExecutable=\"true\") found"))
    return processes, problems


def _called_files(parser: ProductParser, subprocess_specs: dict[str, BpmnProcessSpec]) -> set[str]:
    found = set()
    for name in subprocess_specs:
        try:
            found.add(parser.get_process_parser(name).filename)
        except Exception:  # noqa: BLE001 - an embedded subprocess's id is in its parent's file
            continue
    return found


def _validation_problem(exc: ValidationException, filename: str,
                        tree: etree._ElementTree | None = None) -> Problem:
    line = exc.line_number if isinstance(exc.line_number, int) else None
    if line is None and tree is not None and exc.id:
        # SpiffWorkflow reads ``node.line_number``, which lxml elements do not have.
        line = element_lines(tree).get(exc.id)
    message = str(exc).split("\n")[0]
    message = re.sub(r"\s+", " ", message).strip()
    bad_id = _XSD_BAD_ID.search(message)
    if bad_id:
        # The schema's words for a duplicate id ("not a valid value of the atomic type
        # 'xs:ID'") tell a process owner nothing: say what is wrong and what to do.
        element = bad_id.group(1)
        return Problem(exc.file_name or filename, line, element,
                       f"the id {element!r} is used by more than one element, or is not a valid id (start with a "
                       "letter or '_'; letters, digits, '-', '_' and '.' only): give each element its own id")
    return Problem(exc.file_name or filename, line, exc.id or None, message)


_XSD_BAD_ID = re.compile(r"attribute 'id': '([^']*)' is not a valid value of the atomic type 'xs:ID'")


# -- Timer values -------------------------------------------------------------------------
def normalize_timers(specs: list[BpmnProcessSpec]) -> list[tuple[Any, TimerEventDefinition, str]]:
    """Turn Camunda-style timer text into SpiffWorkflow expressions, in place.

    Camunda Modeler writes ``PT4H``; SpiffWorkflow evaluates the text as an expression and
    needs ``"PT4H"``. Text wrapped in ``${…}`` is an expression; anything else is a literal.
    Run once, on freshly parsed specs (the stored spec holds the normalized text).
    Returns (task spec, definition, original text) for the linter.
    """
    found = []
    for spec in specs:
        for task_spec in spec.task_specs.values():
            for definition in _timer_definitions(task_spec):
                original = definition.expression or ""
                definition.expression = _timer_expression(original)
                found.append((task_spec, definition, original))
    return found


def _timer_definitions(task_spec: Any) -> list[TimerEventDefinition]:
    definition = getattr(task_spec, "event_definition", None)
    if definition is None:
        return []
    if isinstance(definition, TimerEventDefinition):
        return [definition]
    return [d for d in getattr(definition, "event_definitions", []) if isinstance(d, TimerEventDefinition)]


def _timer_expression(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith(("${", "#{")):
        return unwrap(stripped)
    if stripped[:1] in ("'", '"'):
        return stripped
    return repr(stripped)


def check_timer_literal(definition: TimerEventDefinition, text: str) -> str | None:
    """Return a message if a literal timer value is not valid ISO 8601, else None."""
    stripped = text.strip().strip("'\"")
    if text.strip().startswith(("${", "#{")):
        return None
    try:
        if isinstance(definition, DurationTimerEventDefinition):
            TimerEventDefinition.parse_iso_duration(stripped)
        elif isinstance(definition, CycleTimerEventDefinition):
            TimerEventDefinition.parse_iso_recurring_interval(stripped)
        elif isinstance(definition, TimeDateEventDefinition):
            from datetime import datetime
            parsed = datetime.fromisoformat(stripped)
            if parsed.tzinfo is None:
                return (f"timer date {stripped!r} has no UTC offset; write it as "
                        f"{stripped}+08:00 (or Z)")
    except Exception:  # noqa: BLE001 - SpiffWorkflow raises bare Exception for bad ISO text
        return (f"timer value {stripped!r} is not ISO 8601 (examples: PT4H, P15D, "
                "R3/PT1H, 2026-12-01T09:00:00+08:00); wrap an expression in ${...}")
    return None
