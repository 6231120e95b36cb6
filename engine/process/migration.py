"""Moving running cases to another version of their process.

A new version changes nothing for the cases already running: they finish on the version they
started on. A process owner may move chosen cases explicitly. A dry run says, per case,
whether it can move and what would change for it; a migration moves one case in the
caller's transaction, under the instance lock, and records it in the case's audit trail.
A case that cannot move stays where it is, and the answer says why.

Built on SpiffWorkflow's ``SpiffWorkflow.bpmn.util.diff``: ``SpecDiff`` aligns the old
version's task specs with the new one's (by id, then by position in the graph), and
``WorkflowDiff`` maps each task of the case to its new spec or names it as removed. Its
``migrate_workflow`` then resets the ready and waiting tasks so they are predicted again from
the new spec; that reset also drops a ready task's data and a waiting timer's due time (the
timer would start again from the moment of the migration), so :func:`_move` does the same
steps but keeps both when the step's timer did not change.

A case can move when (a) every task it has started or passed exists in the new version (a
removed step the case already passed would leave its history pointing at nothing), (b) every
active step keeps its kind (a user task does not become a service task under someone's
hands), (c) an active step's form exists in the new version and keeps the type of every
field it had, (d) no parallel join the case is in or heading for would wait for a flow its
tokens can no longer reach (see :func:`_stranded_joins`), and (e) the moved state reads back
under the new version. The open tasks,
message subscriptions and BPMN timers are then projected again from the new version: a
task keeps its row (its claim, comments, drafts and SLA start) with the new candidate
groups, assignment, form and due date; timers and subscriptions are written afresh.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from SpiffWorkflow.bpmn.specs.mixins.parallel_gateway import ParallelGateway
from SpiffWorkflow.bpmn.util.diff import WorkflowDiff, diff_workflow
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from engine.access import identity
from engine.access.identity import Actor
from engine.audit import record_instance_event
from engine.bpmn.diff import Words, form_changes, retyped_fields
from engine.bpmn.parser import SLA_POLICY, camunda_of, properties_of
from engine.bpmn.script_engine import attach_calendar
from engine.bpmn.serializer import SERIALIZER, dump_state, load_state
from engine.calendars import SHANGHAI
from engine.errors import ExpressionError, InstanceNotFound, InvalidInput, UserNotFound
from engine.models import (
    ACTIVE_TASK_STATES,
    InstanceStatus,
    MessageSubscription,
    ProcessInstance,
    ProcessVersion,
    SlaPolicy,
    Task,
    TaskCandidate,
    TaskExclusion,
    TaskKind,
    TaskStatus,
    Timer,
    TimerKind,
    TimerStatus,
)
from engine.process import deployments
from engine.process.catalogue import require_owner
from engine.process.projection import KIND_TASK, Assignment, assignment_for, timer_due
from engine.process.runtime import Runtime, locked_instance
from engine.process.tasks import is_candidate
from engine.process.unit_of_work import run_and_save
from engine.sla import clock, milestones
from engine.sla.calendar_store import CALENDARS

# One request, or one page's submit, looks at no more cases than this; the CLI goes on in
# batches until every chosen case has been tried.
MAX_CASES = 500
ACTIVE = TaskState.READY | TaskState.WAITING | TaskState.STARTED | TaskState.ERROR


@dataclass(frozen=True)
class Reason:
    """Why a case cannot move: a code for programs, words for people."""

    code: str
    words: Words


@dataclass
class CaseOutcome:
    instance_id: int
    business_key: str
    from_version: int | None
    to_version: int
    can_move: bool = True
    moved: bool = False
    reasons: list[Reason] = field(default_factory=list)
    changes: list[Words] = field(default_factory=list)

    def refuse(self, code: str, zh: str, en: str) -> None:
        self.can_move = False
        self.reasons.append(Reason(code, Words(zh, en)))


@dataclass(frozen=True)
class Selection:
    """Which cases: those on ``from_version`` (or on any other version than the target),
    narrowed by branch or by the step they wait at, or exactly the ids given."""

    from_version: int | None = None
    instance_ids: tuple[int, ...] = ()
    branch_code: str | None = None
    waiting_at: str | None = None


def target_version(session: Session, process_key: str, version: int) -> ProcessVersion:
    return deployments.get_version(session, process_key, version)


def select_cases(session: Session, process_key: str, to_version: int, selection: Selection, *,
                 actor: Actor, limit: int = MAX_CASES) -> list[int]:
    """The running cases the selection names that are not on the target version yet,
    oldest first. Ids given are returned as given (those of another process or not running
    are reported as such by the migration itself)."""
    require_owner(actor)
    target = target_version(session, process_key, to_version)
    if selection.instance_ids:
        if len(selection.instance_ids) > limit:
            raise InvalidInput(f"at most {limit} cases at a time")
        return list(dict.fromkeys(selection.instance_ids))
    query = select(ProcessInstance.id).where(ProcessInstance.process_key == process_key,
                                             ProcessInstance.status == InstanceStatus.RUNNING,
                                             ProcessInstance.process_version_id != target.id)
    if selection.from_version is not None:
        source = deployments.get_version(session, process_key, selection.from_version)
        query = query.where(ProcessInstance.process_version_id == source.id)
    if selection.branch_code:
        query = query.where(ProcessInstance.branch_code == selection.branch_code)
    if selection.waiting_at:
        query = query.where(ProcessInstance.id.in_(
            select(Task.instance_id).where(Task.element_id == selection.waiting_at,
                                           Task.status.in_(ACTIVE_TASK_STATES))))
    return list(session.execute(query.order_by(ProcessInstance.id).limit(limit)).scalars())


def dry_run(session: Session, rt: Runtime, *, instance_id: int, process_key: str, to_version: int,
            actor: Actor) -> CaseOutcome:
    """Whether the case can move to ``to_version`` and what would change for it; stores
    nothing."""
    require_owner(actor)
    target = target_version(session, process_key, to_version)
    instance = session.get(ProcessInstance, instance_id)
    outcome, _ = _plan(session, rt, instance, instance_id, target)
    return outcome


def migrate(session: Session, rt: Runtime, *, instance_id: int, process_key: str, to_version: int,
            actor: Actor) -> CaseOutcome:
    """Move one case to ``to_version`` in the caller's transaction, holding its lock. A case
    that cannot move is left as it is; the refusal is recorded in its audit trail too."""
    require_owner(actor)
    target = target_version(session, process_key, to_version)
    try:
        # Every status is let through: a case that is not running is reported as such.
        instance: ProcessInstance | None = locked_instance(session, instance_id, allow=tuple(InstanceStatus))
    except InstanceNotFound:
        instance = None
    outcome, plan = _plan(session, rt, instance, instance_id, target)
    now = rt.now()
    if instance is None:
        return outcome
    if plan is None:
        if instance.process_key == process_key:
            record_instance_event(session, instance, kind="instance.migration_refused", actor=actor.username,
                                  at=now, data={"to_version": target.version,
                                                "reasons": [r.code for r in outcome.reasons],
                                                "words": [r.words.zh for r in outcome.reasons]})
        return outcome
    from_version_id = instance.process_version_id
    _apply(session, rt, instance, plan, target, now)
    record_instance_event(session, instance, kind="instance.migrated", actor=actor.username, at=now,
                          data={"from_version": outcome.from_version, "from_version_id": from_version_id,
                                "to_version": target.version, "to_version_id": target.id,
                                "changes": [w.zh for w in outcome.changes]})
    run_and_save(session, rt, instance, plan.workflow, actor=actor)
    outcome.moved = True
    return outcome


# -- the plan ---------------------------------------------------------------------------------
@dataclass
class _TaskPlan:
    row: Task
    spiff_task: Any
    assignment: Assignment
    assignee: str | None
    due_at: datetime | None
    due_source: str | None
    policy: Any
    # Moves a policy's milestones past the time the step's clock already spent paused.
    shift: Any = None


@dataclass
class _Plan:
    workflow: BpmnWorkflow
    tasks: list[_TaskPlan]


def _plan(session: Session, rt: Runtime, instance: ProcessInstance | None, instance_id: int,
          target: ProcessVersion) -> tuple[CaseOutcome, _Plan | None]:
    if instance is None:
        outcome = CaseOutcome(instance_id, "", None, target.version)
        outcome.refuse("instance_not_found", f"没有编号为 {instance_id} 的案件",
                       f"there is no case {instance_id}")
        return outcome, None
    current = session.get(ProcessVersion, instance.process_version_id)
    assert current is not None
    outcome = CaseOutcome(instance.id, instance.business_key, current.version, target.version)
    if instance.process_key != target.process_key:
        outcome.refuse("other_process", f"该案件属于流程 {instance.process_key}，不是 {target.process_key}",
                       f"the case is of process {instance.process_key}, not {target.process_key}")
        return outcome, None
    if instance.status != InstanceStatus.RUNNING:
        outcome.refuse("not_running", f"案件状态为 {instance.status}，只有运行中的案件可以迁移",
                       f"the case is {instance.status}: only running cases move")
        return outcome, None
    if current.id == target.id:
        outcome.refuse("same_version", f"案件已在版本 {target.version} 上", f"the case is on version {target.version}")
        return outcome, None

    spec, subprocess_specs = rt.spec_for(session, target.id)
    old_spec, old_subprocess_specs = rt.spec_for(session, current.id)
    # A workflow of its own, not the cached one: a dry run changes it and throws it away.
    workflow = load_state(instance.state, old_spec, old_subprocess_specs, rt.script_engine)
    before = {str(t.id): (t.task_spec, timer_due(t)) for t in workflow.get_tasks(state=TaskState.WAITING)}
    top_diff, sub_diffs = diff_workflow(SERIALIZER.registry, workflow, spec, subprocess_specs)
    _check_removed(outcome, top_diff)
    for sub_id, sub_diff in sub_diffs.items():
        sub = workflow.subprocesses[sub_id]
        if sub_diff is None:
            outcome.refuse("subprocess_removed", f"案件正在执行的子流程 {sub.spec.name} 在新版本中不存在",
                           f"the subprocess {sub.spec.name} the case is in is not in the new version")
        else:
            _check_removed(outcome, sub_diff)
    for task, new_spec in [*top_diff.alignment.items(),
                           *[p for d in sub_diffs.values() if d is not None for p in d.alignment.items()]]:
        if new_spec is not None and task.has_state(ACTIVE):
            _check_active(outcome, task, new_spec, current, target)
    if not outcome.can_move:
        return outcome, None

    try:
        # Resetting a token re-runs its spec's update under the new version (a join checks
        # its threshold again): what that raises is a refusal, not a failed request.
        _move(top_diff, workflow, spec)
        workflow.subprocess_specs = subprocess_specs
        for sub_id, sub_diff in sub_diffs.items():
            sub = workflow.subprocesses[sub_id]
            assert sub_diff is not None
            _move(sub_diff, sub, subprocess_specs[sub.spec.name])
        moved = load_state(dump_state(workflow), spec, subprocess_specs, rt.script_engine)
    except Exception as exc:  # noqa: BLE001 - whatever the library raises, the case stays
        outcome.refuse("state_unreadable", f"迁移后的案件状态无法在新版本下读取：{type(exc).__name__}",
                       f"the moved state cannot be read under the new version: {type(exc).__name__}: {exc}")
        return outcome, None
    for join, missing in _stranded_joins(moved):
        names = [_label(s) for s in missing]
        outcome.refuse("join_unreachable",
                       f"并行网关「{_label(join)}」在新版本中还要等待「{'、'.join(names)}」，案件已无法到达那里，"
                       "汇合将永远不会完成",
                       f"the parallel join “{_label(join)}” would wait in the new version for "
                       f"{', '.join(f'“{n}”' for n in names)}, which the case can no longer reach: "
                       "the join would never complete")
    if not outcome.can_move:
        return outcome, None
    attach_calendar(moved, rt.calendar_snapshot(session))

    for uuid, (old_task_spec, old_due) in before.items():
        task = moved.get_task_from_id(UUID(uuid))
        new_due = timer_due(task) if task is not None else None
        if old_due != new_due:
            name = old_task_spec.bpmn_name or old_task_spec.bpmn_id
            outcome.changes.append(Words(f"定时器「{name}」到期：{_bj(old_due)} → {_bj(new_due)}",
                                         f"timer “{name}” due: {_bj(old_due)} → {_bj(new_due)}"))
    plans = []
    rows = session.execute(select(Task).where(Task.instance_id == instance.id, Task.kind == TaskKind.BPMN,
                                              Task.status.in_(ACTIVE_TASK_STATES))).scalars().all()
    for row in rows:
        task = moved.get_task_from_id(UUID(row.task_uuid))
        if task is None or not task.has_state(TaskState.READY):
            continue
        try:
            plans.append(_task_plan(session, rt, instance, row, task, outcome))
        except (ExpressionError, ValueError) as exc:
            outcome.refuse("assignment_invalid",
                           f"步骤「{row.name or row.element_id}」的分配或到期时间在新版本下无法计算：{exc}",
                           f"step “{row.name or row.element_id}”: its assignment or due date fails "
                           f"under the new version: {exc}")
    if not outcome.can_move:
        return outcome, None
    if not outcome.changes:
        outcome.changes.append(Words("进行中的步骤没有变化", "nothing changes for the active steps"))
    return outcome, _Plan(moved, plans)


def _check_removed(outcome: CaseOutcome, diff: WorkflowDiff) -> None:
    for task in diff.removed:
        if task.has_state(TaskState.PREDICTED_MASK):
            continue  # not reached yet: predicted again from the new version
        spec = task.task_spec
        name = getattr(spec, "bpmn_name", None) or getattr(spec, "bpmn_id", None) or spec.name
        if task.has_state(ACTIVE):
            outcome.refuse("active_step_removed", f"进行中的步骤「{name}」在新版本中已删除",
                           f"the active step “{name}” was removed in the new version")
        else:
            outcome.refuse("passed_step_removed", f"案件已经过的步骤「{name}」在新版本中已删除，案件历史无法保留",
                           f"the step “{name}” the case already passed was removed in the new version: "
                           "its history would point at nothing")


def _check_active(outcome: CaseOutcome, task: Any, new_spec: Any, current: ProcessVersion,
                  target: ProcessVersion) -> None:
    old_spec = task.task_spec
    name = getattr(old_spec, "bpmn_name", None) or getattr(old_spec, "bpmn_id", None) or old_spec.name
    if type(old_spec).__name__ != type(new_spec).__name__:
        outcome.refuse("step_kind_changed", f"进行中的步骤「{name}」的类型在新版本中改变了",
                       f"the active step “{name}” changes kind in the new version "
                       f"({type(old_spec).__name__} → {type(new_spec).__name__})")
        return
    if not task.has_state(TaskState.READY) or not getattr(old_spec, "manual", False):
        return
    old_key, new_key = camunda_of(old_spec).get("formKey"), camunda_of(new_spec).get("formKey")
    if not new_key:
        return
    new_form = (target.forms or {}).get(new_key)
    if new_form is None:
        outcome.refuse("form_missing", f"进行中的步骤「{name}」的表单 {new_key} 不在版本 {target.version} 中",
                       f"the form {new_key} of the active step “{name}” is not in version {target.version}")
        return
    old_form = (current.forms or {}).get(old_key) if old_key else None
    retyped = retyped_fields(old_form, new_form)
    if retyped:
        outcome.refuse("form_incompatible", f"进行中的步骤「{name}」的表单字段类型改变：{', '.join(retyped)}",
                       f"the form of the active step “{name}” changes the type of: {', '.join(retyped)}")
        return
    if old_key != new_key:
        outcome.changes.append(Words(f"步骤「{name}」的表单：{old_key or '（无）'} → {new_key}",
                                     f"step “{name}” form: {old_key or '(none)'} → {new_key}"))
    else:
        for words in form_changes(old_form, new_form):
            outcome.changes.append(Words(f"步骤「{name}」的表单 {new_key}：{words.zh}",
                                         f"step “{name}” form {new_key}: {words.en}"))


def _stranded_joins(workflow: BpmnWorkflow) -> list[tuple[Any, list[Any]]]:
    """The parallel joins of the moved case, in the process and in each subprocess it is
    in, that would wait for an incoming flow no token of the case can reach any more, with
    those flows' sources.

    A parallel join fires once a token has come along every incoming flow. The case's
    tokens that already arrived came along the old version's flows, and a split it already
    passed does not start the new version's extra branches: a join that gained an incoming
    flow (a branch added to the split, a step put between an arrived branch and the join)
    would wait for ever, with the case running and nothing open. An inclusive join only
    waits for what its tokens can still reach, so it is not checked."""
    stranded = []
    for wf in (workflow, *workflow.subprocesses.values()):
        own = list(wf.tasks.values())
        for spec in wf.spec.task_specs.values():
            if not isinstance(spec, ParallelGateway) or len(spec.inputs) < 2:
                continue
            mine = [t for t in own if t.task_spec is spec]
            reach = _reachable([t.task_spec for t in own if t.has_state(ACTIVE) and t.task_spec is not spec],
                               stop=spec)
            waiting = any(t.has_state(TaskState.WAITING) for t in mine)
            if not waiting and not any(i in reach for i in spec.inputs):
                continue  # behind the case, or on a path it does not take
            # Tokens that arrived: the join's tasks whose incoming step is done, the one
            # waiting and those it cancelled as the next token came (SpiffWorkflow counts them).
            arrived = {t.parent.task_spec for t in mine if waiting and t.parent is not None
                       and t.has_state(TaskState.WAITING | TaskState.CANCELLED)
                       and t.parent.has_state(TaskState.COMPLETED)}
            missing = [i for i in spec.inputs if i not in arrived and i not in reach]
            if missing:
                stranded.append((spec, missing))
    return stranded


def _reachable(sources: list[Any], *, stop: Any) -> set[Any]:
    """The specs a token at one of ``sources`` can come to, not going through ``stop``."""
    seen: set[Any] = set()
    pending = [s for s in sources if s is not stop]
    while pending:
        spec = pending.pop()
        if spec in seen:
            continue
        seen.add(spec)
        pending.extend(o for o in spec.outputs if o is not stop and o not in seen)
    return seen


def _label(spec: Any) -> str:
    return str(getattr(spec, "bpmn_name", None) or getattr(spec, "bpmn_id", None) or spec.name)


def _move(diff: WorkflowDiff, workflow: Any, spec: Any) -> None:
    """``SpiffWorkflow.bpmn.util.diff.migrate_workflow``, keeping what its reset drops: a
    ready step's data (the case's variables as the step sees them) and a waiting timer's due
    time when the timer's definition is the same."""
    old_specs = {task.id: task.task_spec for task in workflow.tasks.values()}
    workflow.spec = spec
    for task in workflow.tasks.values():
        aligned = diff.alignment.get(task)
        if aligned is not None:
            task.task_spec = aligned
    for task in list(workflow.get_tasks(state=TaskState.READY | TaskState.WAITING, skip_subprocesses=True)):
        if task.id not in workflow.tasks:
            continue  # dropped with an ancestor reset before it
        data = copy.deepcopy(task.data)
        event_value = task.internal_data.get("event_value")
        task.reset_branch(data)
        if event_value is not None and _timer(old_specs.get(task.id)) == _timer(task.task_spec) \
                and task.has_state(TaskState.WAITING):
            task.internal_data["event_value"] = event_value
    if workflow.last_task not in workflow.tasks:
        workflow.last_task = None


def _timer(spec: Any) -> tuple[str, Any] | None:
    definition = getattr(spec, "event_definition", None)
    if definition is None:
        return None
    return type(definition).__name__, getattr(definition, "expression", None)


def _task_plan(session: Session, rt: Runtime, instance: ProcessInstance, row: Task, task: Any,
               outcome: CaseOutcome) -> _TaskPlan:
    spec = task.task_spec
    given = assignment_for(session, rt, instance, task)
    name = spec.bpmn_name or spec.bpmn_id
    words = outcome.changes
    if row.element_id != spec.bpmn_id:
        words.append(Words(f"步骤「{name}」的编号：{row.element_id} → {spec.bpmn_id}",
                           f"step “{name}” id: {row.element_id} → {spec.bpmn_id}"))
    if (row.name or None) != (spec.bpmn_name or None):
        words.append(Words(f"步骤名称：{row.name} → {spec.bpmn_name}", f"step name: {row.name} → {spec.bpmn_name}"))
    if sorted(row.candidate_groups or []) != sorted(given.groups):
        words.append(Words(f"步骤「{name}」的候选组：{', '.join(row.candidate_groups or []) or '（无）'} → "
                           f"{', '.join(given.groups) or '（无）'}",
                           f"step “{name}” candidate groups: {', '.join(row.candidate_groups or []) or '(none)'} → "
                           f"{', '.join(given.groups) or '(none)'}"))
    assignee = _assignee_after(session, row, given)
    if assignee != row.assignee:
        words.append(Words(f"步骤「{name}」的处理人：{row.assignee or '（无）'} → {assignee or '（待认领）'}",
                           f"step “{name}” assignee: {row.assignee or '(none)'} → {assignee or '(to be claimed)'}"))
    # The SLA clock keeps its start: the step has been open since it was created.
    probe = Task(process_key=instance.process_key, element_id=spec.bpmn_id, lane=spec.lane,
                 sla_policy_key=properties_of(spec).get(SLA_POLICY),
                 priority=given.priority, due_at=given.due_at, calendar_incomplete=given.calendar_incomplete,
                 due_source="diagram" if given.due_at is not None else None)
    policy = clock.match(session, rt, probe, task.data)
    due_at, source = given.due_at, ("diagram" if given.due_at is not None else None)
    paused = None
    if due_at is None and policy is not None:
        start = row.sla_started_at or row.created_at
        calendar = CALENDARS.get(session, policy.business_hours)
        due = calendar.add(start, policy.target_amount, policy.target_unit)
        paused = clock.PausedTime(calendar, policy.target_unit, clock.pauses(row), legacy=clock.legacy_pause(row))
        due_at, source = paused(due.at), "policy"
    if due_at != row.due_at:
        words.append(Words(f"步骤「{name}」的到期时间：{_bj(row.due_at)} → {_bj(due_at)}",
                           f"step “{name}” due: {_bj(row.due_at)} → {_bj(due_at)}"))
    if (policy.id if policy is not None else None) != row.sla_policy_id:
        words.append(Words(f"步骤「{name}」的 SLA 策略：{_policy_key(session, row.sla_policy_id)} → "
                           f"{policy.key if policy is not None else '（无）'}",
                           f"step “{name}” SLA policy: {_policy_key(session, row.sla_policy_id, '(none)')} → "
                           f"{policy.key if policy is not None else '(none)'}"))
    return _TaskPlan(row, task, given, assignee, due_at, source, policy, paused)


def _assignee_after(session: Session, row: Task, given: Assignment) -> str | None:
    """Who holds the step after the move: the diagram's assignee when it names one; else the
    person who holds it now if they may still take it (a candidate, not recused); else
    nobody, and the step waits to be claimed."""
    if given.assignee:
        return given.assignee
    if row.assignee is None:
        return None
    if f"user:{row.assignee}" in given.excluded:
        return None
    try:
        user = identity.get_user(session, row.assignee)
    except UserNotFound:
        return None
    if not user.active:
        return None
    person = identity.actor_for(session, user)
    probe = Task(candidate_groups=given.groups, branch_code=row.branch_code)
    if not is_candidate(probe, person) or any(f"group:{g}" in given.excluded for g in person.groups):
        return None
    return row.assignee


def _policy_key(session: Session, policy_id: int | None, none: str = "（无）") -> str:
    if policy_id is None:
        return none
    policy = session.get(SlaPolicy, policy_id)
    return policy.key if policy is not None else str(policy_id)


def _bj(moment: datetime | None) -> str:
    return moment.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M") if moment is not None else "–"


# -- applying it ------------------------------------------------------------------------------
def _apply(session: Session, rt: Runtime, instance: ProcessInstance, plan: _Plan, target: ProcessVersion,
           now: datetime) -> None:
    instance.process_version_id = target.id
    # Timers and subscriptions are written again by the projection from the moved workflow;
    # a timer whose definition did not change keeps its due time (see _move).
    projected = dict(instance.projected or {})
    again = [uuid for uuid, kind in projected.items() if kind != KIND_TASK]
    if again:
        session.execute(update(Timer).where(Timer.kind == TimerKind.BPMN, Timer.task_uuid.in_(again),
                                            Timer.status == TimerStatus.WAITING)
                        .values(status=TimerStatus.CANCELLED))
        session.execute(delete(MessageSubscription).where(MessageSubscription.task_uuid.in_(again)))
        instance.projected = {u: k for u, k in projected.items() if u not in again}
    for task_plan in plan.tasks:
        _reproject_task(session, rt, instance, task_plan, now)
    session.flush()


def _reproject_task(session: Session, rt: Runtime, instance: ProcessInstance, plan: _TaskPlan,
                    now: datetime) -> None:
    row, spec, given = plan.row, plan.spiff_task.task_spec, plan.assignment
    row.element_id, row.name, row.lane = spec.bpmn_id, spec.bpmn_name, spec.lane
    row.sla_policy_key = properties_of(spec).get(SLA_POLICY)
    row.form_key = camunda_of(spec).get("formKey")
    row.priority, row.follow_up_at = given.priority, given.follow_up_at
    if sorted(row.candidate_groups or []) != sorted(given.groups):
        row.candidate_groups = list(given.groups)
        session.execute(delete(TaskCandidate).where(TaskCandidate.task_id == row.id))
        for group in given.groups:
            session.add(TaskCandidate(task_id=row.id, group_key=group))
    if (row.excluded or []) != given.excluded:
        row.excluded = given.excluded or None
        session.execute(delete(TaskExclusion).where(TaskExclusion.task_id == row.id))
        for principal in given.excluded:
            session.add(TaskExclusion(task_id=row.id, principal=principal,
                                      case_wide=given.case_wide and principal not in given.separated))
    if plan.assignee != row.assignee:
        row.assignee = plan.assignee
        row.status = TaskStatus.CLAIMED if plan.assignee else TaskStatus.OPEN
    policy_id = plan.policy.id if plan.policy is not None else None
    if (plan.due_at, policy_id) != (row.due_at, row.sla_policy_id):
        milestones.retire_task_timers(session, [row.task_uuid])
        start = row.sla_started_at or row.created_at
        row.due_at, row.due_source, row.sla_policy_id = plan.due_at, plan.due_source, policy_id
        row.at_risk_at = None
        if row.due_at is not None:
            row.at_risk_at = milestones.at_risk(session, plan.policy, row, start=start)
        if plan.policy is not None and row.due_at is not None:
            if plan.shift is not None:
                row.at_risk_at = plan.shift(milestones.at_risk(session, plan.policy, row, start=start))
            milestones.arm(session, rt, instance, row, plan.policy, start=start, now=now, shift=plan.shift)


# -- what the owners' page lists ----------------------------------------------------------------
@dataclass(frozen=True)
class RunningCase:
    instance_id: int
    business_key: str
    version: int
    branch_code: str | None
    started_at: datetime
    steps: list[str]  # the names of its open steps


def running_cases(session: Session, process_key: str, *, actor: Actor, not_on: int | None = None,
                  on: int | None = None, limit: int = 200) -> list[RunningCase]:
    """The running cases of the process, oldest first, with the version each is on and the
    steps it waits at; ``not_on`` leaves out the cases already on that version, ``on`` keeps
    only those on that one."""
    require_owner(actor)
    query = (select(ProcessInstance, ProcessVersion.version)
             .join(ProcessVersion, ProcessVersion.id == ProcessInstance.process_version_id)
             .where(ProcessInstance.process_key == process_key, ProcessInstance.status == InstanceStatus.RUNNING))
    if not_on is not None:
        query = query.where(ProcessVersion.version != not_on)
    if on is not None:
        query = query.where(ProcessVersion.version == on)
    found = session.execute(query.order_by(ProcessInstance.id).limit(limit)).all()
    steps: dict[int, list[str]] = {}
    if found:
        for instance_id, name, element_id in session.execute(
                select(Task.instance_id, Task.name, Task.element_id)
                .where(Task.instance_id.in_([i.id for i, _ in found]), Task.status.in_(ACTIVE_TASK_STATES))
                .order_by(Task.id)):
            steps.setdefault(instance_id, []).append(name or element_id)
    return [RunningCase(i.id, i.business_key, version, i.branch_code, i.started_at, steps.get(i.id, []))
            for i, version in found]
