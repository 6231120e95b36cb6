"""Firing timers. The database is the source of truth; queues only deliver wake-ups.

Every waiting BPMN timer has a ``bpm_timer`` row (see ``engine.process.projection``). Firing one is
idempotent: lock the instance (the same lock order as every other change, so a timer and
a user's completion never deadlock), then claim one occurrence of the row with a conditional
UPDATE (``waiting`` → ``fired`` *for the due time this delivery read*); a second delivery, a
second worker or a retried job finds nothing to claim and changes nothing. The due time is
part of the claim because a cycle timer's row goes back to ``waiting`` for its next
occurrence: a delivery that read the row before the first one committed would otherwise
find it ``waiting`` again and fire the same occurrence twice. Claim and effect commit together, so a worker killed
mid-job leaves the row ``waiting`` and the next sweep fires it again, exactly once.

SpiffWorkflow fires a timer only when ``due < now`` strictly, so callers wake just after
the due instant (:data:`FIRE_DELAY`), never at it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from SpiffWorkflow.exceptions import TaskNotFoundException
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import and_, bindparam, exists, func, or_, select, tuple_, update
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.access.roles import PROCESS_OWNER, SUPERVISOR
from engine.audit import record_system_event
from engine.bpmn.serializer import dump_state
from engine.calendars import check_plausible
from engine.clock import ensure_aware
from engine.db import Database, rowcount
from engine.errors import InvalidInput, NotFound, PermissionDenied
from engine.models import ACTIVE_TIMER_STATES, InstanceStatus, ProcessInstance, Timer, TimerKind, TimerStatus
from engine.process import instances
from engine.process.projection import settled_timer, timer_due
from engine.process.runtime import Runtime, lock_instance_row, lock_instance_rows, lock_statement, locked_instance
from engine.process.unit_of_work import audit, run_and_save
from engine.sla import case_clock, milestones
from engine.timers import schedules
from engine.timers.notify import Notifier

log = logging.getLogger(__name__)
FIRE_DELAY = timedelta(milliseconds=5)
TIMER_ACTOR = Actor.system("timer")


def fire(session: Session, rt: Runtime, timer_id: int) -> bool:
    """Fire one timer if it is due and still waiting; return whether it fired."""
    return _fire_one(session, rt, timer_id)[0]


def _fire_one(session: Session, rt: Runtime, timer_id: int) -> tuple[bool, int | None]:
    """:func:`fire`, and the id of the timer's instance (None for a schedule's timer)."""
    now = rt.now()
    # Usually one statement: the timer's instance locked, the timer read along with it.
    found = lock_instance_row(session, _LOCK_WITH_TIMER, {"timer_id": timer_id})
    if found is None:
        # No instance (a schedule's timer), or no such timer.
        timer = session.execute(select(Timer).where(Timer.id == timer_id)).scalar_one_or_none()
        if timer is None or timer.kind != TimerKind.SCHEDULE or timer.status != TimerStatus.WAITING \
                or timer.due_at >= now:
            return False, None
        # No instance to lock: the claim alone makes a second delivery a no-op.
        return _claim(session, timer, now) and schedules.start_slot(session, rt, timer, now=now), None
    instance, timer = found
    return _fire_locked(session, rt, instance, timer, now), instance.id


def _fire_locked(session: Session, rt: Runtime, instance: ProcessInstance, timer: Timer, now: datetime, *,
                 claimed: bool = False) -> bool:
    """Fire ``timer`` of ``instance``, whose lock this transaction holds. ``claimed``: its
    occurrence was claimed already (a batch claims all of its rows in one statement)."""
    if timer.status != TimerStatus.WAITING or timer.due_at >= now:
        return False
    if instance.status not in (InstanceStatus.RUNNING, InstanceStatus.FAILED):
        # The instance ended or was cancelled: nothing may happen, and the row is settled.
        session.execute(update(Timer).where(Timer.id == timer.id, Timer.status == TimerStatus.WAITING)
                        .values(status=TimerStatus.CANCELLED))
        return False
    # The claim is the authority: the read above took no lock, so its status and due time may
    # be those of before a delivery that held the instance lock meanwhile.
    if not claimed and not _claim(session, timer, now):
        return False  # another delivery got here first
    if timer.kind == TimerKind.SLA:
        milestones.fire_milestone(session, timer=timer, instance=instance, now=now, evaluator=rt.evaluator)
        return True
    if timer.kind == TimerKind.CASE:
        case_clock.fire_milestone(session, timer=timer, instance=instance, now=now, evaluator=rt.evaluator)
        return True
    if instance.status != InstanceStatus.RUNNING:
        _unclaim(session, timer.id)  # a failed instance's timers wait for its retry
        return False
    return _fire_bpmn(session, rt, timer, instance, now)


# The timer row is read with the instance but not locked: the claim below is the authority.
_LOCK_WITH_TIMER = lock_statement(ProcessInstance.id == Timer.instance_id, Timer.id == bindparam("timer_id"),
                                  also=Timer)
# The occurrence is named by its due time: a cycle timer's row waits again, at a later time.
_CLAIM = (update(Timer).where(Timer.id == bindparam("timer_id"), Timer.status == TimerStatus.WAITING,
                              Timer.due_at == bindparam("occurrence"))
          .values(status=TimerStatus.FIRED, fired_at=bindparam("now")))
_UNCLAIM = (update(Timer).where(Timer.id == bindparam("timer_id"))
            .values(status=TimerStatus.WAITING, fired_at=None))


def _claim(session: Session, timer: Timer, now: datetime) -> bool:
    """Claim the occurrence of ``timer`` due at the time it was read with."""
    # On the connection: a plain conditional UPDATE, without the ORM's flush before it or
    # its bookkeeping after it (nothing in this transaction reads the row's status again).
    params = {"timer_id": timer.id, "occurrence": timer.due_at, "now": now}
    return rowcount(session.connection().execute(_CLAIM, params)) == 1


def _unclaim(session: Session, timer_id: int) -> None:
    session.connection().execute(_UNCLAIM, {"timer_id": timer_id})


# -- batches --------------------------------------------------------------------------------------
# One delivery fires its own timer and, in the same transaction, up to BATCH - 1 others that are
# due: under load a worker's cost per firing is mostly what is paid once per job and once per
# transaction (rq's bookkeeping, about twenty Redis round trips; the begin, the lock and the
# commit), so one job for fifty firings pays it once. See docs/timers.md#batches.
BATCH = 50

# The instances of due timers, locked in the order every change locks an instance, oldest due
# first. SKIP LOCKED: an instance someone else holds (a user's completion, another worker's
# batch) is left to its own delivery instead of being waited for, so a batch never waits for a
# second lock and two batches never deadlock over each other's rows. A timer whose firing
# already raised (``attempts``) is fired by its own deliveries only, so that one broken timer does
# not roll back every batch that would include it.
_LOCK_DUE = (lock_statement(ProcessInstance.id == Timer.instance_id, Timer.status == TimerStatus.WAITING,
                            Timer.due_at < bindparam("now"), Timer.id != bindparam("timer_id"),
                            ProcessInstance.status.in_((InstanceStatus.RUNNING, InstanceStatus.FAILED)),
                            or_(Timer.attempts.is_(None), Timer.attempts == 0), also=Timer)
             .order_by(Timer.due_at).limit(bindparam("limit"))
             .with_for_update(of=ProcessInstance, skip_locked=True))


@dataclass
class BatchProgress:
    """Which timer a batch was firing when it raised: that one's attempt is counted."""

    current: int | None = None


def fire_batch(session: Session, rt: Runtime, timer_id: int, *, limit: int = BATCH,
               progress: BatchProgress | None = None) -> tuple[bool, list[int]]:
    """Fire ``timer_id`` as :func:`fire` does, then up to ``limit - 1`` other due timers of
    other instances, in this transaction. Returns whether ``timer_id`` fired and the ids of the
    others that fired and stay fired (a cycle timer waiting for its next occurrence does not):
    their own deliveries would change nothing and can be dropped.

    Each occurrence is still claimed by its due time (one UPDATE for the batch), each instance
    is locked before its timer is touched, and each instance's audit chain is appended under its
    own lock: a batch fires every occurrence at most once, like single deliveries do."""
    progress = progress if progress is not None else BatchProgress()
    progress.current = timer_id
    fired, own_instance = _fire_one(session, rt, timer_id)
    progress.current = None  # from here on, a failure is the batch's, not this timer's
    if limit <= 1:
        return fired, []
    now = rt.now()
    rows = lock_instance_rows(session, _LOCK_DUE, {"now": now, "timer_id": timer_id, "limit": limit - 1})
    # One timer per instance: a second one of the same instance waits for its own delivery, as
    # firing the first may settle it (a boundary timer ends the task another timer watches).
    seen = {own_instance}
    batch: list[tuple[ProcessInstance, Timer]] = []
    for instance, timer in rows:
        if instance.id not in seen:
            seen.add(instance.id)
            batch.append((instance, timer))
    if not batch:
        return fired, []
    claimed = _claim_many(session, [timer for _, timer in batch], now)
    done: list[int] = []
    for instance, timer in batch:
        if timer.id in claimed:
            progress.current = timer.id
            if _fire_locked(session, rt, instance, timer, now, claimed=True):
                done.append(timer.id)
    progress.current = None
    if not done:
        return fired, []
    # A cycle timer's row waits again for its next occurrence, whose delivery must stay.
    session.flush()
    settled = set(session.connection().execute(
        select(Timer.id).where(Timer.id.in_(done), Timer.status != TimerStatus.WAITING)).scalars())
    return fired, [t for t in done if t in settled]


def _claim_many(session: Session, timers: list[Timer], now: datetime) -> set[int]:
    """Claim the occurrences of ``timers`` (each at the due time it was read with) in one
    statement; returns the ids claimed."""
    statement = (update(Timer).where(Timer.status == TimerStatus.WAITING,
                                     tuple_(Timer.id, Timer.due_at).in_([(t.id, t.due_at) for t in timers]))
                 .values(status=TimerStatus.FIRED, fired_at=now).returning(Timer.id))
    return set(session.connection().execute(statement).scalars())


def _fire_bpmn(session: Session, rt: Runtime, timer: Timer, instance: ProcessInstance, now: datetime) -> bool:
    workflow = rt.load(session, instance)
    task = workflow.get_task_from_id(UUID(timer.task_uuid)) if timer.task_uuid else None
    caught_up: dict[str, Any] = {}
    if task is not None and _cycle(task):
        caught_up = _apply_catch_up(task, rt.settings.timer_catch_up, now)
    workflow.refresh_timers()
    if task is not None and task.has_state(TaskState.WAITING) and not _cycle(task):
        # SpiffWorkflow did not consider it due (clock skew between processes):
        # put the claim back so the next wake-up tries again.
        _unclaim(session, timer.id)
        return False
    audit(session, rt, instance, "timer.fired", TIMER_ACTOR, task_uuid=timer.task_uuid,
          element_id=timer.element_id, due_at=timer.due_at.isoformat(), **caught_up)
    if timer.task_uuid:
        settled_timer(session, timer.task_uuid)  # claimed above: the projection need not settle it
    run_and_save(session, rt, instance, workflow, actor=TIMER_ACTOR)
    if task is not None and task.has_state(TaskState.WAITING) and _cycle(task):
        # A cycle timer keeps waiting for its next occurrence: the same row waits again.
        next_at = timer_due(task)
        if next_at is not None:
            session.execute(update(Timer).where(Timer.id == timer.id)
                            .values(status=TimerStatus.WAITING, due_at=next_at))
            rt.announce_timer(session, (timer.id, next_at))
    return True


def _apply_catch_up(task: Any, policy: str, now: datetime) -> dict[str, Any]:
    """After downtime a cycle timer is behind by several occurrences. ``once`` (the
    default) fires the latest one and skips the earlier ones; ``all`` fires every missed
    occurrence. Returns, for the ``timer.fired`` audit event, what was skipped: how many
    occurrences, the first and last of them and the one that fires instead (nothing when
    none was skipped). A count and two ends, not a list: an unbounded cycle of minutes
    after a week's downtime has ten thousand."""
    value = task.internal_data.get("event_value")
    if policy != "once" or not isinstance(value, dict):
        return {}
    step = timedelta(seconds=value["duration"])
    first = next_at = datetime.fromisoformat(value["next"])
    remaining = value["cycles"]  # occurrences left; -1 means unbounded
    skipped = 0
    while next_at + step < now and (remaining < 0 or remaining > 1):
        next_at += step
        skipped += 1
        if remaining > 0:
            remaining -= 1
    value["next"], value["cycles"] = next_at.isoformat(), remaining
    if not skipped:
        return {}
    return {"catch_up": policy, "skipped_occurrences": skipped, "first_skipped_at": first.isoformat(),
            "last_skipped_at": (next_at - step).isoformat(), "occurrence_at": next_at.isoformat()}


def _cycle(task: object) -> bool:
    value = getattr(task, "internal_data", {}).get("event_value")
    return isinstance(value, dict)


def due_ids(session: Session, now: datetime, *, limit: int = 500) -> list[int]:
    return list(session.execute(
        select(Timer.id).where(Timer.status == TimerStatus.WAITING, Timer.due_at < now)
        .order_by(Timer.due_at).limit(limit)
    ).scalars())


def next_due(session: Session) -> datetime | None:
    due: datetime | None = session.execute(
        select(func.min(Timer.due_at)).where(Timer.status == TimerStatus.WAITING)
    ).scalar_one_or_none()
    return due


MAX_ATTEMPTS = 5


def fire_once(db: Database, rt: Runtime, timer_id: int) -> bool:
    """One delivery of one timer, as its own unit of work.

    If firing raises (a milestone's role no longer exists, a schedule's process is not
    deployed...), the attempt is recorded on the row, and after :data:`MAX_ATTEMPTS` the
    timer is marked ``failed`` for an administrator instead of being retried on every sweep
    forever. The database being unreachable is not the timer's fault: it is re-raised and
    not counted, and the sweep delivers the timer once the database is back.
    """
    try:
        with db.transaction() as session:
            return fire(session, rt, timer_id)
    except (OperationalError, InterfaceError):
        raise
    except Exception as exc:
        log.exception("timer %s could not be fired", timer_id)
        _count_attempt(db, timer_id, exc)
        return False


def fire_batch_once(db: Database, rt: Runtime, timer_id: int, *, limit: int = BATCH) -> tuple[bool, list[int]]:
    """One delivery of ``timer_id`` that fires other due timers along with it
    (:func:`fire_batch`), as one unit of work.

    If a firing raises, the whole batch is rolled back: the attempt is counted on the timer that
    raised (as :func:`fire_once` does), and unless that was this delivery's own timer, it is fired
    again alone. The other timers of the batch keep their own deliveries."""
    progress = BatchProgress()
    try:
        with db.transaction() as session:
            return fire_batch(session, rt, timer_id, limit=limit, progress=progress)
    except (OperationalError, InterfaceError):
        raise
    except Exception as exc:
        culprit = progress.current
        log.exception("timer %s could not be fired (in a batch delivered for timer %s)",
                      culprit if culprit is not None else "(none in particular)", timer_id)
        if culprit == timer_id:
            _count_attempt(db, timer_id, exc)
            return False, []
        if culprit is not None:
            _count_attempt(db, culprit, exc)
        # Another timer's firing, or the batch itself (its statements, its commit): this
        # delivery's own timer is tried again alone, and counted only if it fails alone.
        return fire_once(db, rt, timer_id), []


def _count_attempt(db: Database, timer_id: int, exc: Exception) -> None:
    with db.transaction() as session:
        timer = session.get(Timer, timer_id)
        if timer is not None and timer.status == TimerStatus.WAITING:
            timer.attempts = (timer.attempts or 0) + 1
            timer.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            if timer.attempts >= MAX_ATTEMPTS:
                timer.status = TimerStatus.FAILED


def fire_due(db: Database, rt: Runtime, *, limit: int = 500) -> int:
    """Fire everything due now, one transaction per timer. Returns how many fired."""
    with db.transaction() as session:
        ids = due_ids(session, rt.now(), limit=limit)
    fired = 0
    for timer_id in ids:
        try:
            fired += fire_once(db, rt, timer_id)
        except (OperationalError, InterfaceError):
            log.warning("database unreachable while firing timer %s; the next sweep retries", timer_id)
            raise
    return fired


class EmbeddedRunner:
    """The default for ``make run``: one thread in the app process that sleeps until the
    next due timer (or until told a new one exists) and fires what is due."""

    def __init__(self, db: Database, rt: Runtime, *, max_sleep: float = 30.0, notifier: Notifier | None = None,
                 on_error: Callable[[Exception], None] | None = None) -> None:
        self.db, self.rt, self.max_sleep, self.notifier = db, rt, max_sleep, notifier
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_error = on_error

    def timer_created(self, timer_id: int, due_at: datetime) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="bpm-timers", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def run_once(self) -> float:
        """Fire what is due; return seconds to sleep until the next due timer."""
        fire_due(self.db, self.rt)
        if self.notifier is not None:
            self.notifier.deliver_pending(self.db, self.rt)
        with self.db.transaction() as session:
            upcoming = next_due(session)
        if upcoming is None:
            return self.max_sleep
        wait = (upcoming + FIRE_DELAY - self.rt.now()).total_seconds()
        return min(max(wait, 0.0), self.max_sleep)

    def _loop(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                wait = self.run_once()
                backoff = 1.0
            except Exception as exc:  # noqa: BLE001 - database away: back off and retry
                log.warning("timer runner: %s; retrying in %.0f s", exc, backoff)
                if self._on_error:
                    self._on_error(exc)
                wait, backoff = backoff, min(backoff * 2, 60.0)
            self._wake.wait(wait)
            self._wake.clear()


def reschedule(session: Session, rt: Runtime, *, timer_id: int, due_at: datetime, actor: Actor) -> Timer:
    """An administrator moves a waiting timer (audited). A BPMN timer's new time is also
    written into the workflow, so SpiffWorkflow and the row agree."""
    if not actor.has_role(SUPERVISOR):
        raise PermissionDenied("rescheduling a timer needs the supervisor or admin role")
    ensure_aware(due_at, name="due_at")
    check_plausible(due_at, name="due_at")
    timer = session.get(Timer, timer_id)
    if timer is None or not _may_see(session, timer, actor):
        raise NotFound(f"no timer {timer_id}")
    previous = timer.due_at
    if timer.instance_id is not None:
        instance = locked_instance(session, timer.instance_id, allow=(InstanceStatus.RUNNING, InstanceStatus.FAILED))
        session.refresh(timer)
    if timer.status not in ACTIVE_TIMER_STATES:
        raise InvalidInput(f"timer {timer_id} is {timer.status}; only waiting timers can be moved")
    if timer.kind == TimerKind.BPMN:
        workflow = rt.load(session, instance)
        try:
            task = workflow.get_task_from_id(UUID(timer.task_uuid)) if timer.task_uuid else None
        except TaskNotFoundException:  # a row naming a step its workflow no longer has
            task = None
        if task is None or not task.has_state(TaskState.WAITING):
            raise InvalidInput(f"timer {timer_id} is no longer waiting in its process")
        value = task.internal_data.get("event_value")
        if isinstance(value, dict):
            value["next"] = due_at.isoformat()
        else:
            task.internal_data["event_value"] = due_at.isoformat()
        instance.state = dump_state(workflow)
    timer.due_at = due_at
    # "timer_kind", not "kind": the audit helper's own ``kind`` argument is the event's kind.
    data = {"timer_id": timer_id, "timer_kind": timer.kind, "from": previous.isoformat(), "to": due_at.isoformat()}
    if timer.instance_id is not None:
        audit(session, rt, instance, "timer.rescheduled", actor, task_uuid=timer.task_uuid, **data)
    else:
        record_system_event(session, kind="timer.rescheduled", actor=actor.username, at=rt.now(), data=data)
    rt.announce_timer(session, (timer.id, due_at))
    return timer


def _firm_wide(actor: Actor) -> bool:
    """A timer of no case (a schedule's next run, company business) is for headquarters:
    process owners, who own the schedules, and supervisors who sit at no branch."""
    return actor.is_admin or PROCESS_OWNER in actor.groups or (SUPERVISOR in actor.groups and not actor.branch_code)


def _may_see(session: Session, timer: Timer, actor: Actor) -> bool:
    """A case's timer is seen by whoever may read the case (docs/domain.md#case-visibility: a
    branch supervisor their branch's, nobody a case that recuses them); a schedule's by
    :func:`_firm_wide` roles."""
    if timer.instance_id is None:
        return _firm_wide(actor)
    return instances.readable(session, timer.instance_id, actor)


def visible(session: Session, *, actor: Actor, status: str | None = None, limit: int = 100) -> list[Timer]:
    """``GET /timers``: the timers ``actor`` may see (:func:`_may_see`), soonest first; for
    supervisors and process owners."""
    if not actor.has_role(SUPERVISOR, PROCESS_OWNER):
        raise PermissionDenied("the timer list is for supervisors and process owners")
    case_timers = and_(Timer.instance_id.is_not(None), exists().where(
        ProcessInstance.id == Timer.instance_id, instances.readable_clause(session, actor)))
    scope = or_(case_timers, Timer.instance_id.is_(None)) if _firm_wide(actor) else case_timers
    query = select(Timer).where(scope).order_by(Timer.due_at, Timer.id).limit(limit)
    if status:
        query = query.where(Timer.status == status)
    return list(session.execute(query).scalars())

