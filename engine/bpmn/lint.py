"""The deploy linter: everything SpiffWorkflow would only discover at run time.

SpiffWorkflow's own validation is XSD only; bad expressions, unquoted timer values and
missing forms pass parsing and fail in production. Each finding names the file, line and
element and says what to do. A deployment with any finding stores nothing.
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Iterator
from typing import Any

from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimeDateEventDefinition, TimerEventDefinition
from SpiffWorkflow.bpmn.specs.mixins.exclusive_gateway import ExclusiveGateway
from SpiffWorkflow.bpmn.specs.mixins.inclusive_gateway import InclusiveGateway
from SpiffWorkflow.bpmn.specs.mixins.multiinstance_task import LoopTask
from SpiffWorkflow.bpmn.specs.mixins.script_task import ScriptTask
from SpiffWorkflow.bpmn.specs.mixins.user_task import UserTask

from engine.bpmn import date_functions
from engine.bpmn.expressions import SafeEvaluator, unwrap
from engine.bpmn.forms import condition_problems, declared_fields, shape_problems, unchecked_formats
from engine.bpmn.parser import (
    CANDIDATE_GROUPS_IF_NONE,
    COMPLETED_BY_VARIABLE,
    EXCLUDE_GROUPS,
    EXCLUDE_SERVICE_GROUPS_OF,
    EXCLUDE_USERS,
    PAYLOAD_FORM,
    RECUSAL_SCOPE,
    RECUSAL_SCOPES,
    SEPARATE_FROM,
    SLA_POLICY,
    STEP_WRITABLE_VARIABLES,
    WRITES_ENGINE_VARIABLES,
    ParsedProcess,
    RegistryServiceTask,
    camunda_of,
    check_timer_literal,
    exclusion_parts,
    normalize_timers,
    properties_of,
    writable_variables,
)
from engine.bpmn.service_tasks import ServiceRegistry
from engine.errors import ExpressionError, Problem
from engine.numbering import check_format

DYNAMIC_GROUP_PREFIXES = ("branch:", "client:")
_EXPRESSION_ATTRIBUTES = ("assignee", "dueDate", "followUpDate", "priority")


def candidate_groups_of(task_spec: Any) -> list[str]:
    camunda = camunda_of(task_spec)
    raw = camunda.get("candidateGroups")
    if raw:
        return [g.strip() for g in raw.split(",") if g.strip()]
    return [task_spec.lane] if task_spec.lane else []


def _message_definitions(task_spec: Any) -> Iterator[MessageEventDefinition]:
    definition = getattr(task_spec, "event_definition", None)
    if isinstance(definition, MessageEventDefinition):
        yield definition
    for inner in getattr(definition, "event_definitions", []) or []:
        if isinstance(inner, MessageEventDefinition):
            yield inner


def lint(
    processes: list[ParsedProcess],
    *,
    forms: dict[str, Any],
    evaluator: SafeEvaluator,
    services: ServiceRegistry,
    allow_scripts: bool,
    known_groups: Collection[str] | None,
    known_policies: Collection[str] | None = None,
) -> list[Problem]:
    """Every problem of ``processes``. ``known_groups`` and ``known_policies`` (the active SLA
    policies' keys) are None when no database is at hand: names are then not checked."""
    problems: list[Problem] = []
    for process in processes:
        specs = [process.spec, *process.subprocess_specs.values()]

        def report(element_id: str | None, message: str, process: ParsedProcess = process) -> None:
            line = process.lines.get(element_id) if element_id else None
            problems.append(Problem(process.source_file, line, element_id, message))

        def check_expr(element_id: str, what: str, expression: str, *, calendar: bool = True) -> bool:
            """Whether the expression passed. ``calendar`` False: the engine evaluates this
            kind of expression without an instance's calendar (candidate groups, recusals,
            correlation keys), so a date function there could never run."""
            try:
                evaluator.check(expression)
            except ExpressionError as exc:
                report(element_id, f"{what}: {exc.message}")
                return False
            used = sorted(date_functions.calls(_tree(expression)))
            if used and not calendar:
                report(element_id, f"{what}: {', '.join(f'{n}()' for n in used)} cannot be used here: "
                                   "the business calendar is available to timers, gateway conditions, due "
                                   "dates and service parameters")
                return False
            return True

        if process.business_key_format is not None:
            problem = check_format(process.business_key_format)
            if problem:
                report(process.key, f"process property 'businessKeyFormat' {process.business_key_format!r}: {problem}")

        for task_spec, definition, text in normalize_timers(specs):
            message = check_timer_literal(definition, text)
            if message:
                report(task_spec.bpmn_id, message)
            elif text.strip().startswith(("${", "#{")) and check_expr(task_spec.bpmn_id, "timer expression", text):
                message = _timer_value_problem(definition, text)
                if message:
                    report(task_spec.bpmn_id, message)

        for spec in specs:
            for task_spec in spec.task_specs.values():
                element = getattr(task_spec, "bpmn_id", None)
                if element is None:
                    continue  # SpiffWorkflow's internal Start/End/split specs
                _lint_task(task_spec, element, report, check_expr, forms=forms, services=services,
                           evaluator=evaluator, allow_scripts=allow_scripts,
                           known_groups=known_groups, known_policies=known_policies)
    return problems


def _lint_task(task_spec: Any, element: str, report: Any, check_expr: Any, *,
               forms: dict[str, Any], services: ServiceRegistry, evaluator: SafeEvaluator,
               allow_scripts: bool, known_groups: Collection[str] | None,
               known_policies: Collection[str] | None) -> None:
    scripts = []
    if isinstance(task_spec, ScriptTask):
        scripts.append(("script task", task_spec.script or ""))
    for attr in ("prescript", "postscript"):
        if getattr(task_spec, attr, None):
            scripts.append((attr, getattr(task_spec, attr)))
    for what, script in scripts:
        if not allow_scripts:
            report(element, f"{what}s are not allowed: diagrams may not run code. Ask a developer "
                            "for a service task function, or enable BPM_ALLOW_SCRIPT_TASKS")
            continue
        try:
            evaluator.check_script(script)
        except ExpressionError as exc:
            report(element, f"{what}: {exc.message}")

    payload_form = properties_of(task_spec).get(PAYLOAD_FORM)
    if payload_form is not None and payload_form not in forms:
        report(element, f"property {PAYLOAD_FORM!r}: form {payload_form!r} not found: add forms/{payload_form}.json "
                        "to the bundle")

    policy = properties_of(task_spec).get(SLA_POLICY)
    if policy is not None and known_policies is not None and policy not in known_policies:
        report(element, f"property {SLA_POLICY!r}: SLA policy {policy!r} does not exist or is not active: "
                        "create or activate it on the SLA policies page, or fix the key")

    camunda = camunda_of(task_spec)
    for attr in _EXPRESSION_ATTRIBUTES:
        value = camunda.get(attr)
        if value and value.strip().startswith(("${", "#{")):
            check_expr(element, f"camunda:{attr}", value)

    if isinstance(task_spec, UserTask):
        form_key = camunda.get("formKey")
        if not form_key:
            report(element, "user task has no form: set camunda:formKey to a file name in "
                            "the bundle's forms/ folder (without .json)")
        elif form_key not in forms:
            report(element, f"form {form_key!r} not found: add forms/{form_key}.json to the bundle")
        elif unchecked := unchecked_formats(forms[form_key]):
            report(element, f"form {form_key!r} uses format(s) {', '.join(unchecked)} that the form checker cannot "
                            "check (any text would pass): use a checked format (date-time, date, email, …) or "
                            "a pattern")
        if form_key in forms:
            for message in shape_problems(forms[form_key]) + condition_problems(forms[form_key]):
                report(element, f"form {form_key!r}: {message}")
        groups = candidate_groups_of(task_spec)
        if not groups and not camunda.get("assignee"):
            report(element, "user task has no lane, camunda:candidateGroups or camunda:assignee: "
                            "nobody could ever see it")
        properties = properties_of(task_spec)
        for name in (EXCLUDE_USERS, EXCLUDE_GROUPS, EXCLUDE_SERVICE_GROUPS_OF, SEPARATE_FROM, CANDIDATE_GROUPS_IF_NONE):
            for value in exclusion_parts(properties.get(name, "")):
                if value.startswith(("${", "#{")):
                    check_expr(element, f"property {name!r}", value, calendar=False)
        scope = properties.get(RECUSAL_SCOPE)
        if scope is not None and scope not in RECUSAL_SCOPES:
            report(element, f"property {RECUSAL_SCOPE!r} must be one of {', '.join(RECUSAL_SCOPES)}, got {scope!r}")
        variable = properties.get(COMPLETED_BY_VARIABLE)
        if variable is not None and not variable.isidentifier():
            report(element, f"property {COMPLETED_BY_VARIABLE!r} must name a variable (letters, digits, "
                            f"underscore), got {variable!r}")
        refused = writable_variables(task_spec) - STEP_WRITABLE_VARIABLES
        if refused:
            report(element, f"property {WRITES_ENGINE_VARIABLES!r} may name only "
                            f"{', '.join(sorted(STEP_WRITABLE_VARIABLES))}, got {', '.join(sorted(refused))}")
        for group in groups:
            if group.startswith(("${", "#{")):
                check_expr(element, "candidate group", group, calendar=False)
            elif group.startswith(DYNAMIC_GROUP_PREFIXES):
                continue
            elif known_groups is not None and group not in known_groups:
                report(element, f"candidate group {group!r} does not exist: create it "
                                "(bpm group create) or fix the lane/candidateGroups")

    if isinstance(task_spec, (ExclusiveGateway, InclusiveGateway)):
        for condition, _target in task_spec.cond_task_specs:
            if condition is not None:
                check_expr(element, "gateway condition", condition.args[0])

    if isinstance(task_spec, RegistryServiceTask):
        if task_spec.operation_name not in services:
            report(element, f"service task function {task_spec.operation_name!r} is not "
                            f"registered; known: {', '.join(services.names())}")
        for name, expression in task_spec.operation_params.items():
            check_expr(element, f"service parameter {name!r}", expression)

    if isinstance(task_spec, LoopTask):
        for attr in ("cardinality", "condition", "completion_condition"):
            value = getattr(task_spec, attr, None)
            if isinstance(value, str) and value:
                check_expr(element, f"loop {attr}", value)

    for definition in _message_definitions(task_spec):
        if not definition.name:
            report(element, "message event has no message with a name: set messageRef")
        for prop in definition.correlation_properties:
            check_expr(element, f"correlation property {prop.name!r}", prop.retrieval_expression, calendar=False)


def _tree(expression: str) -> ast.Expression:
    """The syntax tree of an expression that passed ``SafeEvaluator.check``."""
    return ast.parse(unwrap(expression), mode="eval")


def _timer_value_problem(definition: TimerEventDefinition, text: str) -> str | None:
    """A timer whose whole expression is a date function call must get the kind of value its
    timer needs: a date-time for timeDate, never for a duration or cycle, never true/false."""
    body = _tree(text).body
    if not (isinstance(body, ast.Call) and isinstance(body.func, ast.Name) and body.func.id in date_functions.NAMES):
        return None
    name = body.func.id
    if name not in date_functions.RETURNS_MOMENT:
        return f"timer expression: {name}() gives true or false, not a time; use it in a gateway condition"
    if not isinstance(definition, TimeDateEventDefinition):
        return (f"timer expression: {name}() gives a date-time: put it in a timeDate timer, "
                "not a timeDuration or timeCycle")
    return None


def form_overlaps(processes: list[ParsedProcess], forms: dict[str, Any]) -> list[Problem]:
    """Warnings, not refusals: a field two different forms of one process declare, where a step
    with the second form can follow a step with the first. The later value silently replaces
    the earlier step's (the result's ``channel`` would rewrite the intake channel); rename one
    unless both mean the same thing. Steps on alternative paths (two ways to register) do not
    count, nor one form used by several steps."""
    warnings: list[Problem] = []
    for process in processes:
        specs = {process.spec.name: process.spec, **process.subprocess_specs}
        after = _successors(specs)
        steps = [(spec_name, name, str(camunda_of(ts).get("formKey")))
                 for spec_name, spec in specs.items() for name, ts in spec.task_specs.items()
                 if isinstance(ts, UserTask) and camunda_of(ts).get("formKey") in forms]
        seen: set[tuple[str, str, str]] = set()
        for spec_a, first, form_a in steps:
            fields_a = declared_fields(forms[form_a]) or set()
            for spec_b, later, form_b in steps:
                if form_a == form_b or (spec_b, later) not in after.get((spec_a, first), set()):
                    continue
                for name in sorted(fields_a & (declared_fields(forms[form_b]) or set())):
                    if (name, form_a, form_b) in seen:
                        continue
                    seen.add((name, form_a, form_b))
                    warnings.append(Problem(process.source_file, process.lines.get(later), later,
                                            f"warning: form {form_b!r} writes {name!r}, which form {form_a!r} of the "
                                            f"earlier step {first!r} wrote: the later value replaces it; rename "
                                            "one unless both mean the same"))
    return warnings


def _successors(specs: dict[str, Any]) -> dict[tuple[str, str], set[tuple[str, str]]]:
    """Every task each task can lead to, across sub-processes: a sub-process starts at its
    Start, and anything in it may be followed by what follows the sub-process."""
    edges: dict[tuple[str, str], set[tuple[str, str]]] = {}
    exits: dict[str, list[tuple[str, str]]] = {}
    for spec_name, spec in specs.items():
        for name, ts in spec.task_specs.items():
            targets = {(spec_name, o.name) for o in ts.outputs}
            inner = getattr(ts, "spec", None)
            if isinstance(inner, str) and inner in specs:
                targets.add((inner, "Start"))
                exits.setdefault(inner, []).extend(targets - {(inner, "Start")})
            edges[(spec_name, name)] = targets
    for inner, outs in exits.items():
        for name in specs[inner].task_specs:
            edges[(inner, name)] |= set(outs)
    reach: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for node in edges:
        seen: set[tuple[str, str]] = set()
        todo = list(edges[node])
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            todo.extend(edges.get(current, ()))
        reach[node] = seen
    return reach
