"""The instance unit of work, and the dependencies every engine service shares.

Invariant 1 of the architecture: every change to an instance locks its row, loads the
workflow, applies the change, runs engine steps, saves, refreshes the projections and
appends audit events, all in the caller's transaction. :func:`locked_instance`,
:func:`advance` and :func:`save` are those steps; the services in ``engine.instances``,
``engine.tasks`` and ``engine.messages`` compose them.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from jsonschema import Draft202012Validator
from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import String, bindparam, delete, func, insert, select, update
from sqlalchemy import event as sa_event
from sqlalchemy import inspect as sqlalchemy_inspect
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from engine import sla
from engine.assignment import resolve_candidate_groups
from engine.audit import record_instance_event
from engine.bpmn.lint import candidate_groups_of
from engine.bpmn.parser import (
    EXCLUDE_GROUPS,
    EXCLUDE_SERVICE_GROUPS_OF,
    EXCLUDE_USERS,
    RECUSAL_SCOPE,
    camunda_of,
    exclusion_parts,
    properties_of,
)
from engine.bpmn.script_engine import SafeScriptEngine, attach_calendar, date_functions_for
from engine.bpmn.serializer import SpecCache, WorkflowCache, dump_state, load_state
from engine.clock import Clock, SystemClock
from engine.config import Settings
from engine.date_functions import CalendarSnapshot, DateFunctions
from engine.db import after_commit
from engine.errors import BpmError, ExpressionError, InstanceNotFound, InstanceNotRunning
from engine.expressions import SafeEvaluator, json_safe, unwrap
from engine.identity import Actor
from engine.models import (
    MessageSubscription,
    ProcessInstance,
    ProcessVersion,
    StaffProfile,
    Task,
    TaskCandidate,
    TaskExclusion,
    Timer,
    User,
)
from engine.service_tasks import ServiceRegistry
from engine.service_tasks import registry as default_registry

log = logging.getLogger(__name__)

RUNNING, COMPLETED, CANCELLED, FAILED = "running", "completed", "cancelled", "failed"
OPEN, CLAIMED = "open", "claimed"
TASK_DONE, TASK_CANCELLED = "completed", "cancelled"
ACTIVE_TASK_STATES = (OPEN, CLAIMED)
KIND_TASK, KIND_MESSAGE, KIND_TIMER = "task", "message", "timer"


@dataclass
class Runtime:
    """What engine services need besides a session; built once per process."""

    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    services: ServiceRegistry = field(default_factory=lambda: default_registry)
    specs: SpecCache = field(default_factory=SpecCache)
    # Told about every new timer after commit: the embedded runner or the rq scheduler.
    scheduler: Any = None

    def __post_init__(self) -> None:
        for module in self.settings.service_modules:
            # Developer-written service-task functions register themselves on import.
            importlib.import_module(module)
        self.evaluator = SafeEvaluator(timeout_ms=self.settings.expression_timeout_ms)
        self.script_engine = SafeScriptEngine(
            self.evaluator, self.services, allow_scripts=self.settings.allow_script_tasks
        )
        self.workflows = WorkflowCache(self.settings.workflow_cache)
        self._validators: dict[tuple[int, str], Draft202012Validator] = {}
        self._report_variables: dict[int, list[str]] = {}
        self.policies = sla.PolicyCache()

    def now(self) -> datetime:
        return self.clock.now()

    def spec_for(self, session: Session, version_id: int) -> Any:
        def loader() -> str:
            return session.execute(
                select(ProcessVersion.spec_json).where(ProcessVersion.id == version_id)
            ).scalar_one()

        return self.specs.get(version_id, loader)

    def form_validator(self, session: Session, version_id: int, form_key: str) -> Draft202012Validator | None:
        key = (version_id, form_key)
        if key not in self._validators:
            forms = session.execute(
                select(ProcessVersion.forms).where(ProcessVersion.id == version_id)
            ).scalar_one()
            schema = forms.get(form_key)
            if schema is None:
                return None
            self._validators[key] = Draft202012Validator(schema)
        return self._validators[key]

    def report_variables(self, session: Session, version_id: int) -> list[str]:
        """The version's reportVariables (versions are immutable: cached for good)."""
        if version_id not in self._report_variables:
            self._report_variables[version_id] = list(session.execute(
                select(ProcessVersion.report_variables).where(ProcessVersion.id == version_id)
            ).scalar_one() or [])
        return self._report_variables[version_id]

    def new_workflow(self, session: Session, version_id: int) -> BpmnWorkflow:
        spec, subprocess_specs = self.spec_for(session, version_id)
        workflow = BpmnWorkflow(spec, subprocess_specs, script_engine=self.script_engine)
        return attach_calendar(workflow, self.calendar_snapshot(session))

    def load(self, session: Session, instance: ProcessInstance) -> BpmnWorkflow:
        workflow = self.workflows.take(instance.id, instance.state)
        if workflow is None:
            spec, subprocess_specs = self.spec_for(session, instance.process_version_id)
            workflow = load_state(instance.state, spec, subprocess_specs, self.script_engine)
        return attach_calendar(workflow, self.calendar_snapshot(session))

    def keep(self, session: Session, instance: ProcessInstance, workflow: BpmnWorkflow) -> None:
        """Offer the saved workflow to the cache once the transaction commits, under the state
        it was last saved as (see :class:`WorkflowCache`)."""
        kept: dict[int, tuple[ProcessInstance, BpmnWorkflow]] | None = session.info.get(_KEPT)
        if kept is None:
            kept = session.info[_KEPT] = {}
            cache = self.workflows

            def offer() -> None:
                for instance_id, (row, flow) in kept.items():
                    # The attribute as this transaction left it; absent (expired) means unknown.
                    state = row.__dict__.get("state")
                    if isinstance(state, bytes) and row.status in (RUNNING, FAILED):
                        cache.put(instance_id, state, flow)

            after_commit(session, offer)
        kept[instance.id] = (instance, workflow)

    def calendar_snapshot(self, session: Session) -> CalendarSnapshot:
        """What diagram date functions compute with: the SLA calendar at the revision this
        transaction read (the instance lock brings it), from the shared cache on first use."""
        return CalendarSnapshot(lambda: sla.CALENDARS.get(session, "default"), clock=self.now)


def lock_statement(*where: Any, also: Any = None) -> Any:
    """``SELECT instance FOR UPDATE`` (SQLite's BEGIN IMMEDIATE already holds the database),
    re-reading the row so a change that waited for the lock sees its predecessor, and
    bringing the reference-data revisions along (see ``sla.revisions``). ``also``: one more
    entity read in the same statement, unlocked (its columns are as of the statement's
    start, so only for rows whose later claim is the authority, like a timer's)."""
    entities = (ProcessInstance,) if also is None else (ProcessInstance, also)
    return (select(*entities, *sla.REVISION_COLUMNS).where(*where)
            .with_for_update(of=ProcessInstance).execution_options(populate_existing=True))


def lock_instance_row(session: Session, statement: Any, params: dict[str, Any]) -> Any:
    """The locked instance, or ``(instance, other)`` for a statement built with ``also``."""
    row = session.execute(statement, params).one_or_none()
    if row is None:
        return None
    *entities, calendar_revision, sla_revision = row
    sla.remember_revisions(session, calendar_revision, sla_revision)
    return entities[0] if len(entities) == 1 else tuple(entities)


_LOCK_BY_ID = lock_statement(ProcessInstance.id == bindparam("instance_id"))


def locked_instance(session: Session, instance_id: int, *, allow: tuple[str, ...] = (RUNNING,)) -> ProcessInstance:
    """Lock the instance row and re-read it (see :func:`lock_statement`)."""
    instance = lock_instance_row(session, _LOCK_BY_ID, {"instance_id": instance_id})
    if instance is None:
        raise InstanceNotFound(f"no instance {instance_id}")
    if instance.status not in allow:
        raise InstanceNotRunning(f"instance {instance_id} is {instance.status}")
    return instance


def advance(rt: Runtime, instance: ProcessInstance, workflow: BpmnWorkflow) -> None:
    """Run engine steps. A failure inside (a service task raising, an expression failing)
    leaves SpiffWorkflow's task in ERROR with everything before it done: that state is
    consistent, so it is saved and the instance is marked failed with the error kept."""
    try:
        workflow.do_engine_steps()
    except Exception as exc:  # noqa: BLE001 - any failure of diagram logic fails the instance
        log.warning("instance %s failed: %s", instance.id, exc)
        instance.status = FAILED
        instance.error = _describe_failure(exc, workflow)


def _describe_failure(exc: Exception, workflow: BpmnWorkflow | None = None) -> str:
    task = getattr(exc, "task", None)
    bare = task is None
    if bare and workflow is not None:
        # A service-task function's own exception reaches us bare (SpiffWorkflow only marks
        # its task ERROR): name that task and the exception's type, or the error says neither.
        task = next(iter(workflow.get_tasks(state=TaskState.ERROR)), None)
    where = ""
    if task is not None:
        spec = task.task_spec
        where = f"{getattr(spec, 'bpmn_id', spec.name)} ({getattr(spec, 'bpmn_name', '') or ''}): "
    if bare:
        return f"{where}{type(exc).__name__}: {exc}"
    cause = getattr(exc, "exception", None) or exc.__cause__
    detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
    return f"{where}{exc}" if str(exc) and detail in str(exc) else f"{where}{exc} [{detail}]"


def run_and_save(session: Session, rt: Runtime, instance: ProcessInstance,
                 workflow: BpmnWorkflow, *, actor: Actor) -> None:
    """The tail of every change: engine steps, save, projections, outcome in the audit."""
    advance(rt, instance, workflow)
    if instance.status == FAILED:
        audit(session, rt, instance, "instance.failed", actor, error=instance.error)
    failed_before_save = instance.status == FAILED
    save(session, rt, instance, workflow, actor=actor)
    if instance.status == FAILED and not failed_before_save:  # a task's assignment or due date failed
        audit(session, rt, instance, "instance.failed", actor, error=instance.error)
    if instance.status in (RUNNING, COMPLETED) and _outgoing_messages(workflow):
        _send_messages(session, rt, instance, workflow, actor=actor)
    if instance.status == COMPLETED:
        audit(session, rt, instance, "instance.completed", actor)


def _outgoing_messages(workflow: BpmnWorkflow) -> list[Any]:
    """Messages thrown that no event of this instance caught: SpiffWorkflow queues them."""
    return [e for e in workflow.bpmn_events if isinstance(e.event_definition, MessageEventDefinition)]


def _send_messages(session: Session, rt: Runtime, instance: ProcessInstance, workflow: BpmnWorkflow, *,
                   actor: Actor) -> None:
    """Deliver thrown messages to other processes in the same transaction: to the instance
    waiting under the correlation key, or as a message start (a retention case starts its
    post-closure callback; a callback's complaint route starts a complaint).

    Each delivery runs in a savepoint. One that fails (nobody receives the message, the
    receiving start fails) leaves the message queued in this instance's state and marks the
    instance failed with the reason; a retry, after the cause is fixed, sends it again. So a
    message is never lost and never half-delivered."""
    from engine import messages  # the message service builds on this module

    # Save the thrower first: a receiver may answer with a message to this very instance.
    session.flush()
    for event in _outgoing_messages(workflow):
        definition = event.event_definition
        # The receiving case remembers where it came from (a callback opened by a closure).
        payload = {**_thrown_payload(workflow, event), "origin_business_key": instance.business_key,
                   "origin_process": instance.process_key}
        # No declared key: the message starts a new case, numbered by the receiving process.
        key = declared_correlation_key(rt, definition, payload)
        try:
            with session.begin_nested():
                # The receiving process's starter groups do not apply: the diagram, not the
                # person whose step threw the message, decided to start it.
                target = messages.correlate(session, rt, name=definition.name, correlation_key=key,
                                            actor=Actor.system(actor.username), payload=payload)
        except BpmError as exc:
            instance.status = FAILED
            instance.error = f"message {definition.name!r} (key {key!r}) could not be delivered: {exc}"
            audit(session, rt, instance, "instance.failed", actor, error=instance.error)
            break
        workflow.bpmn_events.remove(event)
        audit(session, rt, instance, "message.sent", actor, message=definition.name, correlation_key=key,
              to_instance=target.id, to_process=target.process_key)
    instance.state = dump_state(workflow)


def _thrown_payload(workflow: BpmnWorkflow, event: Any) -> dict[str, Any]:
    """What the message carries: its ``spiffworkflow:messagePayload`` expression's value when
    the diagram gives one, else every variable of the throwing step (Camunda's "all")."""
    definition = event.event_definition
    if getattr(definition, "expression", None) is not None:
        return dict(event.payload) if isinstance(event.payload, dict) else {"payload": event.payload}
    throwers = [t for t in workflow.get_tasks(state=TaskState.COMPLETED)
                if definition in (getattr(t.task_spec, "event_definition", None),
                                  *getattr(getattr(t.task_spec, "event_definition", None), "event_definitions", []))]
    latest = max(throwers, key=lambda t: t.last_state_change, default=None)
    return dict(latest.data) if latest is not None else {}


def declared_correlation_key(rt: Runtime, definition: MessageEventDefinition, data: dict[str, Any]) -> str | None:
    """The key the message's correlation property gives for ``data``, or None when it
    declares none (or none evaluates)."""
    for prop in definition.correlation_properties:
        try:
            return str(rt.evaluator.evaluate(prop.retrieval_expression, data))
        except ExpressionError:
            continue
    return None


def save(session: Session, rt: Runtime, instance: ProcessInstance, workflow: BpmnWorkflow, *,
         actor: Actor) -> None:
    now = rt.now()
    if instance.status == RUNNING and workflow.is_completed():
        instance.status = COMPLETED
        instance.ended_at = now
        instance.ended_by = actor.username
    instance.state = dump_state(workflow)
    instance.updated_at = now
    variables = rt.report_variables(session, instance.process_version_id)
    if variables:
        instance.facts = facts_of(workflow, variables)
    project(session, rt, instance, workflow, now=now)
    rt.keep(session, instance, workflow)


def facts_of(workflow: BpmnWorkflow, variables: list[str]) -> dict[str, Any]:
    """The latest value each report variable was given, across all branches.

    Each parallel branch carries its own copy of the data, so "the last task's data" would
    let a branch's stale copy win. A task counts as setting a variable only where its value
    differs from its parent's; those settings are applied in the order the tasks changed."""
    wanted = set(variables)
    facts: dict[str, Any] = {}
    states = TaskState.COMPLETED | TaskState.READY | TaskState.WAITING
    touched = [t for t in workflow.get_tasks(state=states) if t.data]
    missing = object()
    for task in sorted(touched, key=lambda t: t.last_state_change):
        inherited = task.parent.data if task.parent is not None else {}
        facts.update((k, v) for k, v in task.data.items()
                     if k in wanted and inherited.get(k, missing) != v)
    return json_safe(facts)


# -- projections ---------------------------------------------------------------------------
def _wanted(workflow: BpmnWorkflow, instance: ProcessInstance) -> dict[str, tuple[str, Any]]:
    wanted: dict[str, tuple[str, Any]] = {}
    if instance.status in (COMPLETED, CANCELLED):
        return wanted
    if instance.status in (RUNNING, FAILED):
        # A failed instance keeps its open tasks visible (completing them answers
        # "instance failed" until an administrator retries), rather than losing them.
        for task in workflow.get_tasks(state=TaskState.READY, manual=True):
            wanted[str(task.id)] = (KIND_TASK, task)
    for task in workflow.get_tasks(state=TaskState.WAITING):
        definition = getattr(task.task_spec, "event_definition", None)
        if definition is None:
            continue
        definitions = [definition, *getattr(definition, "event_definitions", [])]
        if any(isinstance(d, MessageEventDefinition) for d in definitions):
            wanted[str(task.id)] = (KIND_MESSAGE, task)
        elif any(isinstance(d, TimerEventDefinition) for d in definitions):
            wanted[str(task.id)] = (KIND_TIMER, task)
    return wanted


def project(session: Session, rt: Runtime, instance: ProcessInstance, workflow: BpmnWorkflow, *,
            now: datetime) -> None:
    """Bring the inbox, subscription and timer rows in line with the workflow.

    The instance row remembers what is projected, so this diffs in memory and writes only
    what changed: usually one insert and one update per step.
    """
    wanted = _wanted(workflow, instance)
    current = dict(instance.projected or {})
    # Set before the rows below are written: their flushes then carry it in the same UPDATE
    # of the instance row as the state, instead of a second UPDATE at commit.
    instance.projected = {uuid: kind for uuid, (kind, _) in wanted.items()}
    gone = {uuid: kind for uuid, kind in current.items() if uuid not in wanted}
    if gone:
        _retire(session, workflow, gone, now)
    for uuid, (kind, task) in wanted.items():
        if current.get(uuid) == kind:
            continue
        if kind == KIND_TASK:
            _insert_task(session, rt, instance, task, now)
        elif kind == KIND_MESSAGE:
            _insert_subscriptions(session, rt, instance, task, now)
        else:
            _insert_timer(session, rt, instance, task, now)


def _retire(session: Session, workflow: BpmnWorkflow, gone: dict[str, str], now: datetime) -> None:
    tasks = [u for u, k in gone.items() if k == KIND_TASK]
    messages = [u for u, k in gone.items() if k == KIND_MESSAGE]
    timers = [u for u, k in gone.items() if k == KIND_TIMER]
    if tasks:
        # A task completed through the API is already marked completed by its service;
        # whatever is still open here was cancelled by the process (boundary, cancel, end).
        # Rows this transaction already holds are settled in memory (no statement); the rest
        # by one UPDATE each.
        loaded = {t.task_uuid: t for t in session.identity_map.values() if isinstance(t, Task)}
        unknown = [u for u in tasks if u not in loaded]
        for uuid in tasks:
            row = loaded.get(uuid)
            if row is not None and row.status in ACTIVE_TASK_STATES:
                row.status, row.completed_at = TASK_CANCELLED, now
        with_sla = unknown + [u for u in tasks if u in loaded and loaded[u].sla_policy_id is not None]
        if with_sla:
            sla.retire_task_timers(session, with_sla)
        for row in opened_tasks(session):
            if row.task_uuid in unknown:  # opened earlier in this unit of work, now gone
                row.status, row.completed_at = TASK_CANCELLED, now
        if unknown:
            session.execute(
                update(Task).where(Task.task_uuid.in_(unknown), Task.status.in_(ACTIVE_TASK_STATES))
                .values(status=TASK_CANCELLED, completed_at=now)
            )
    if messages:
        session.execute(delete(MessageSubscription).where(MessageSubscription.task_uuid.in_(messages)))
    settled = session.info.get(_SETTLED_TIMERS, set())
    timers = [u for u in timers if u not in settled]
    if timers:
        fired: list[str] = []
        cancelled: list[str] = []
        for uuid in timers:
            task = workflow.get_task_from_id(UUID(uuid))
            (fired if task is not None and task.has_state(TaskState.COMPLETED | TaskState.READY)
             else cancelled).append(uuid)
        for uuids, status in ((fired, "fired"), (cancelled, "cancelled")):
            if uuids:
                session.execute(
                    update(Timer).where(Timer.task_uuid.in_(uuids), Timer.status == "waiting")
                    .values(status=status, fired_at=now if status == "fired" else None)
                )


_SETTLED_TIMERS = "bpm_settled_timers"


def settled_timer(session: Session, task_uuid: str) -> None:
    """The caller already marked this timer's row fired: retiring it needs no statement."""
    session.info.setdefault(_SETTLED_TIMERS, set()).add(task_uuid)


def _evaluate_attribute(rt: Runtime, task: Any, value: str | None, dates: DateFunctions | None = None) -> Any:
    if value is None:
        return None
    stripped = value.strip()
    if stripped.startswith(("${", "#{")):
        return rt.evaluator.evaluate(stripped, task.data, dates=dates)
    return stripped


def _as_datetime(value: Any, what: str) -> datetime | None:
    if value in (None, ""):
        return None
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        raise ExpressionError(f"{what} {value!r} has no UTC offset")
    return parsed


def _insert_task(session: Session, rt: Runtime, instance: ProcessInstance, task: Any, now: datetime) -> None:
    spec = task.task_spec
    camunda = camunda_of(spec)
    dates = date_functions_for(task)  # a due date computed on guessed calendar days flags the task
    try:
        assignee = _evaluate_attribute(rt, task, camunda.get("assignee"), dates)
        due_at = _as_datetime(_evaluate_attribute(rt, task, camunda.get("dueDate"), dates), "camunda:dueDate")
        follow_up = _as_datetime(_evaluate_attribute(rt, task, camunda.get("followUpDate"), dates),
                                 "camunda:followUpDate")
        priority_raw = _evaluate_attribute(rt, task, camunda.get("priority"), dates)
        priority = int(priority_raw) if priority_raw not in (None, "") else 50
        groups = resolve_candidate_groups(session, rt.evaluator, candidate_groups_of(spec),
                                          instance=instance, data=task.data)
        properties = properties_of(spec)
        excluded = _exclusions(session, rt, task, properties)
    except (ExpressionError, ValueError) as exc:
        # The step itself succeeded; an unusable assignment/due expression fails the
        # instance so an administrator sees it, instead of a task nobody can find. No row is
        # written and the task is left unprojected, so a retry projects it afresh.
        instance.status = FAILED
        instance.error = f"{spec.bpmn_id}: {exc}"
        instance.projected = {k: v for k, v in (instance.projected or {}).items() if k != str(task.id)}
        return
    row = Task(
        task_uuid=str(task.id), instance_id=instance.id, process_key=instance.process_key,
        element_id=spec.bpmn_id, name=spec.bpmn_name, lane=spec.lane, candidate_groups=groups,
        assignee=str(assignee) if assignee else None, status=CLAIMED if assignee else OPEN,
        priority=priority, created_at=now, due_at=due_at, follow_up_at=follow_up,
        business_key=instance.business_key, client_id=instance.client_id,
        branch_code=instance.branch_code, form_key=camunda.get("formKey"), excluded=excluded or None,
        calendar_incomplete=dates is not None and dates.incomplete,
    )
    # Due date and SLA fields before the INSERT, milestones (which need the id) after it.
    policy = sla.start_clock(session, rt, instance=instance, task=row, data=task.data, now=now)
    # Plain INSERTs, not the unit of work: this runs for every step of every instance, and
    # the ORM's flush costs several times the statements. The row object stays transient;
    # whoever needs the task later in the transaction reads it (``_retire`` does).
    connection = session.connection()
    given = sqlalchemy_inspect(row).dict
    for key in [k for k, default in _TASK_DEFAULTS.items() if default is not None and k not in given]:
        # The column defaults the INSERT would apply, on the object too: it is handed out as
        # it is stored (``opened_tasks``).
        setattr(row, key, _TASK_DEFAULTS[key])
    values = {k: v for k, v in given.items() if not k.startswith("_")}
    if groups and connection.dialect.name == "postgresql":
        # The task and its candidate rows in one statement: the row's id never has to
        # travel back to Python before the candidates can be written.
        params = {**_TASK_DEFAULTS, **values, "groups": groups}
        row.id = connection.execute(_INSERT_TASK_WITH_CANDIDATES, params).scalars().all()[0]
    else:
        row.id = connection.execute(_INSERT_TASK, values).scalar_one()
        if groups:
            connection.execute(_INSERT_CANDIDATE, [{"task_id": row.id, "group_key": g} for g in groups])
    session.info.setdefault(_OPENED_TASKS, []).append(row)
    if excluded:
        case_wide = properties.get(RECUSAL_SCOPE) == "case"
        connection.execute(_INSERT_EXCLUSION, [{"task_id": row.id, "principal": p, "case_wide": case_wide}
                                               for p in excluded])
    if policy is not None:
        sla.schedule_milestones(session, rt, instance=instance, task=row, policy=policy, now=now)


_OPENED_TASKS = "bpm_opened_tasks"


def opened_tasks(session: Session) -> list[Task]:
    """The task rows this unit of work inserted, in order (transient objects, ids set)."""
    return list(session.info.get(_OPENED_TASKS, ()))


_KEPT = "bpm_kept_workflows"


@sa_event.listens_for(Session, "after_soft_rollback")
def _forget_on_rollback(session: Session, _previous: Any) -> None:
    # A rolled-back savepoint may have opened some of them: forget all rather than name a
    # task that does not exist (the caller falls back to the inbox). Likewise the workflows
    # to keep: one changed inside the savepoint no longer matches its row's state.
    session.info.pop(_OPENED_TASKS, None)
    kept = session.info.get(_KEPT)
    if kept is not None:
        kept.clear()


_INSERT_TASK = insert(Task).returning(Task.id)
_INSERT_CANDIDATE = insert(TaskCandidate)
# Every column but the id bound by name (a CTE's INSERT takes no implicit column list);
# unset ones get their Python-side default, as the plain INSERT would.
_TASK_COLUMNS = [c for c in Task.__table__.columns if c.key != "id"]
_TASK_DEFAULTS = {c.key: (c.default.arg if c.default is not None and not callable(c.default.arg) else None)
                  for c in _TASK_COLUMNS}
_NEW_TASK = (insert(Task).values({c.key: bindparam(c.key, type_=c.type) for c in _TASK_COLUMNS})
             .returning(Task.id).cte("new_task"))
_INSERT_TASK_WITH_CANDIDATES = (
    insert(TaskCandidate)
    .from_select(["task_id", "group_key"],
                 select(_NEW_TASK.c.id, func.unnest(bindparam("groups", type_=ARRAY(String)))))
    .returning(TaskCandidate.task_id)
)
_INSERT_EXCLUSION = insert(TaskExclusion)


def _exclusions(session: Session, rt: Runtime, task: Any, properties: dict[str, str]) -> list[str]:
    """Principals recused from the task: ``user:<name>`` and ``group:<key>``. A property is a
    literal (comma-separated) or an expression giving a name or a list; empty values, and a
    plain ``${variable}`` that is not set (a complaint with no staff subject), exclude nobody.
    ``excludeServiceGroupsOf`` names users whose service groups are recused as well."""
    def values_of(name: str) -> list[str]:
        found: list[Any] = []
        for raw in exclusion_parts(properties.get(name) or ""):
            if not raw.startswith(("${", "#{")):
                found += raw.split(",")
            elif not (unwrap(raw).isidentifier() and unwrap(raw) not in task.data):
                value = rt.evaluator.evaluate(raw, task.data)
                found += value if isinstance(value, (list, tuple, set)) else [value]
        return [str(v).strip() for v in found if v is not None and str(v).strip()]

    principals = [f"user:{u}" for u in values_of(EXCLUDE_USERS)]
    principals += [f"group:{g}" for g in values_of(EXCLUDE_GROUPS)]
    subjects = values_of(EXCLUDE_SERVICE_GROUPS_OF)
    if subjects:
        groups = session.execute(select(StaffProfile.service_group_key).join(User, User.id == StaffProfile.user_id)
                                 .where(User.username.in_(subjects), StaffProfile.service_group_key.is_not(None))
                                 ).scalars()
        principals += [f"group:{g}" for g in groups]
    return list(dict.fromkeys(principals))


def correlation_key_for(rt: Runtime, instance: ProcessInstance, definition: MessageEventDefinition,
                        data: dict[str, Any]) -> str:
    """The business key, unless the message declares a correlation property."""
    key = declared_correlation_key(rt, definition, data)
    return key if key is not None else instance.business_key


def _insert_subscriptions(session: Session, rt: Runtime, instance: ProcessInstance, task: Any,
                          now: datetime) -> None:
    definition = task.task_spec.event_definition
    for d in [definition, *getattr(definition, "event_definitions", [])]:
        if isinstance(d, MessageEventDefinition):
            session.add(MessageSubscription(
                instance_id=instance.id, task_uuid=str(task.id), element_id=task.task_spec.bpmn_id,
                message_name=d.name, correlation_key=correlation_key_for(rt, instance, d, task.data),
                created_at=now,
            ))
            return  # one row per waiting task: the task uuid is unique


def timer_due(task: Any) -> datetime | None:
    value = task.internal_data.get("event_value")
    if isinstance(value, dict):
        value = value.get("next")
    if not value:
        return None
    return TimerEventDefinition.get_datetime(value) if isinstance(value, str) else None


def _insert_timer(session: Session, rt: Runtime, instance: ProcessInstance, task: Any, now: datetime) -> None:
    due = timer_due(task)
    if due is None:
        return
    timer_id = session.connection().execute(_INSERT_TIMER, {
        "kind": "bpmn", "instance_id": instance.id, "task_uuid": str(task.id), "element_id": task.task_spec.bpmn_id,
        "due_at": due, "status": "waiting", "created_at": now,
    }).scalar_one()
    if rt.scheduler is not None:
        scheduler = rt.scheduler
        after_commit(session, lambda: scheduler.timer_created(timer_id, due))


_INSERT_TIMER = insert(Timer).returning(Timer.id)


def audit(session: Session, rt: Runtime, instance: ProcessInstance, kind: str, actor: Actor, *,
          task_uuid: str | None = None, **data: Any) -> None:
    record_instance_event(session, instance, kind=kind, actor=actor.username, at=rt.now(),
                          data=data, task_uuid=task_uuid)
