"""The engine's runtime, and the lock every change to an instance starts with.

:class:`Runtime` holds what engine services need besides a session, built once per process
by :func:`engine.bootstrap.build_runtime`. Invariant 1 of the architecture (one instance,
one lock, one transaction) is three modules of this package: :func:`locked_instance` here
takes the lock; :mod:`engine.process.unit_of_work` runs engine steps, saves and audits;
:mod:`engine.process.projection` brings the inbox, subscription and timer rows in line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from jsonschema import Draft202012Validator
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from sqlalchemy import bindparam, event, select
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.bpmn import forms as forms_module
from engine.bpmn.date_functions import CalendarSnapshot
from engine.bpmn.expressions import SafeEvaluator
from engine.bpmn.script_engine import SafeScriptEngine, attach_calendar
from engine.bpmn.serializer import SpecCache, WorkflowCache, load_state
from engine.bpmn.service_tasks import ServiceRegistry
from engine.clock import Clock, SystemClock
from engine.config import Settings
from engine.db import after_commit
from engine.errors import InstanceNotFound, InstanceNotRunning
from engine.models import InstanceStatus, ProcessInstance, ProcessVersion, Timer
from engine.process import passage
from engine.sla.calendar_store import CALENDARS, REVISION_COLUMNS, PolicyCache, remember_revisions


class TimerScheduler(Protocol):
    """Where new timers are announced after commit: the embedded runner's thread, or rq."""

    def timer_created(self, timer_id: int, due_at: datetime) -> None: ...


class MessageDelivery(Protocol):
    """Delivers a message a diagram threw to the case waiting for it, or starts the process
    it starts (``engine.process.messages.correlate``); returns the receiving instance."""

    def __call__(self, session: Session, rt: Runtime, *, name: str, correlation_key: str | None,
                 actor: Actor, payload: dict[str, Any], from_case: bool = ...) -> ProcessInstance: ...


class ScheduledJob(Protocol):
    """An engine job a schedule runs for its slot (``process_key`` ``job:<name>``): the
    monthly VIP evaluation, the quarterly periodic callback batch. Returns what it did, for
    the audit trail."""

    def __call__(self, session: Session, rt: Runtime, *, slot: datetime) -> dict[str, Any]: ...


# Called in the unit of work when a save changed an instance's report facts, with the facts
# before and after: how a product reacts to what a case did (the VIP tier follows a VIP
# case's outcome) without the engine knowing the product.
FactsChanged = Callable[[Session, ProcessInstance, dict[str, Any], dict[str, Any]], None]
# Called as a person completes a user task, before the workflow runs on, with the step (a
# SpiffWorkflow task, its form data already set) and who completed it: a product applies what
# the step decided (an approved extension moves the case's deadline) or refuses it with an
# engine error, which rolls the completion back.
TaskCompleted = Callable[[Session, "Runtime", ProcessInstance, Any, Actor], None]
# Called in the unit of work after the engine ran a step on its own (a service task, an event
# that fired), with the SpiffWorkflow task: a product acts on what the step did with the
# database at hand (a complaint's notice reaches its people, its deadline moves).
EngineTaskRan = Callable[[Session, "Runtime", ProcessInstance, Any], None]
# Called as the engine is about to run a step on its own, with the SpiffWorkflow task: a
# product puts what only the database knows into the step's data (how many complaints on the
# same matter came in lately, before the classification reads it).
EngineTaskReady = Callable[[Session, "Runtime", ProcessInstance, Any], None]


@dataclass
class Runtime:
    """What engine services need besides a session; built once per process."""

    settings: Settings
    clock: Clock = field(default_factory=SystemClock)
    # The service-task functions diagrams may call: the built-in ones, plus what
    # ``engine.bootstrap`` installs (the brokerage's, the deployment's own modules).
    services: ServiceRegistry = field(default_factory=ServiceRegistry.with_builtins)
    specs: SpecCache = field(default_factory=SpecCache)
    # Told about every new timer after commit: the embedded runner or the rq scheduler.
    scheduler: TimerScheduler | None = None
    # Wired by ``engine.bootstrap``: the message service sits above this module.
    deliver_thrown: MessageDelivery | None = None
    on_facts_changed: list[FactsChanged] = field(default_factory=list)
    on_task_completed: list[TaskCompleted] = field(default_factory=list)
    on_engine_task_ran: list[EngineTaskRan] = field(default_factory=list)
    on_engine_task_ready: list[EngineTaskReady] = field(default_factory=list)
    # The jobs schedules may run, by name (``engine.timers.schedules``).
    jobs: dict[str, ScheduledJob] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.evaluator = SafeEvaluator(timeout_ms=self.settings.expression_timeout_ms)
        self.script_engine = SafeScriptEngine(
            self.evaluator, self.services, allow_scripts=self.settings.allow_script_tasks
        )
        self.workflows = WorkflowCache(self.settings.workflow_cache)
        self._validators: dict[tuple[int, str], Draft202012Validator] = {}
        self._report_variables: dict[int, list[str]] = {}
        self.policies = PolicyCache()

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
            self._validators[key] = forms_module.validator_for(schema)
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
        return attach_calendar(passage.remember(workflow), self.calendar_snapshot(session))

    def load(self, session: Session, instance: ProcessInstance) -> BpmnWorkflow:
        workflow = self.workflows.take(instance.id, instance.state)
        if workflow is None:
            spec, subprocess_specs = self.spec_for(session, instance.process_version_id)
            workflow = load_state(instance.state, spec, subprocess_specs, self.script_engine)
        # What was finished already: the unit of work records in the history what finishes now.
        return attach_calendar(passage.remember(workflow), self.calendar_snapshot(session))

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
                    if isinstance(state, bytes) and row.status in (InstanceStatus.RUNNING, InstanceStatus.FAILED):
                        cache.put(instance_id, state, flow)

            after_commit(session, offer)
        kept[instance.id] = (instance, workflow)

    def calendar_snapshot(self, session: Session) -> CalendarSnapshot:
        """What diagram date functions compute with: the SLA calendar at the revision this
        transaction read (the instance lock brings it), from the shared cache on first use."""
        return CalendarSnapshot(lambda: CALENDARS.get(session, "default"), clock=self.now)

    def announce_timer(self, session: Session, timer: Timer | tuple[int, datetime]) -> None:
        """Tell the scheduler about a new or moved timer once the transaction commits.
        ``timer`` is the row (its id and due time are read then, so a row not flushed yet
        is announced too) or its ``(id, due time)``."""
        scheduler = self.scheduler
        if scheduler is None:
            return

        def announce() -> None:
            timer_id, due_at = (timer.id, timer.due_at) if isinstance(timer, Timer) else timer
            scheduler.timer_created(timer_id, due_at)

        after_commit(session, announce)


def lock_statement(*where: Any, also: Any = None) -> Any:
    """``SELECT instance FOR UPDATE`` (SQLite's BEGIN IMMEDIATE already holds the database),
    re-reading the row so a change that waited for the lock sees its predecessor, and
    bringing the reference-data revisions along (see ``calendar_store.revisions``). ``also``: one more
    entity read in the same statement, unlocked (its columns are as of the statement's
    start, so only for rows whose later claim is the authority, like a timer's)."""
    entities = (ProcessInstance,) if also is None else (ProcessInstance, also)
    return (select(*entities, *REVISION_COLUMNS).where(*where)
            .with_for_update(of=ProcessInstance).execution_options(populate_existing=True))


def lock_instance_row(session: Session, statement: Any, params: dict[str, Any]) -> Any:
    """The locked instance, or ``(instance, other)`` for a statement built with ``also``."""
    row = session.execute(statement, params).one_or_none()
    if row is None:
        return None
    *entities, calendar_revision, sla_revision = row
    remember_revisions(session, calendar_revision, sla_revision)
    return entities[0] if len(entities) == 1 else tuple(entities)


def lock_instance_rows(session: Session, statement: Any, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every row of a statement that locks several instances (built with ``also``): the
    entities of each row, the reference-data revisions remembered once."""
    found: list[tuple[Any, ...]] = []
    for row in session.execute(statement, params).all():
        *entities, calendar_revision, sla_revision = row
        remember_revisions(session, calendar_revision, sla_revision)
        found.append(tuple(entities))
    return found


_LOCK_BY_ID = lock_statement(ProcessInstance.id == bindparam("instance_id"))


def locked_instance(session: Session, instance_id: int, *,
                    allow: tuple[str, ...] = (InstanceStatus.RUNNING,)) -> ProcessInstance:
    """Lock the instance row and re-read it (see :func:`lock_statement`)."""
    instance = lock_instance_row(session, _LOCK_BY_ID, {"instance_id": instance_id})
    if instance is None:
        raise InstanceNotFound(f"no instance {instance_id}")
    if instance.status not in allow:
        raise InstanceNotRunning(f"instance {instance_id} is {instance.status}")
    return instance


_KEPT = "bpm_kept_workflows"


@event.listens_for(Session, "after_soft_rollback")
def _forget_kept(session: Session, _previous: Any) -> None:
    # A workflow changed inside a rolled-back savepoint no longer matches its row's state.
    kept = session.info.get(_KEPT)
    if kept is not None:
        kept.clear()
