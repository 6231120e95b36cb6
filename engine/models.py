"""Tables. Everything a screen or a worker queries is a projection row here, so no query
ever has to deserialize a workflow (architecture invariant 3)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from engine.db import Base, UTCDateTime

# BigInteger on PostgreSQL, INTEGER (the rowid alias) on SQLite so ids autoincrement there.
BigId = BigInteger().with_variant(Integer(), "sqlite")


# -- the values of the status and kind columns ------------------------------------------------
# StrEnums are str: they compare equal to the plain strings a query returns, bind as those
# strings on both stores, and serialize to JSON as them.
class InstanceStatus(StrEnum):
    """``bpm_process_instance.status``."""

    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    # A step raised or an expression failed: kept as it was, until an administrator retries.
    FAILED = "failed"


class TaskStatus(StrEnum):
    """``bpm_task.status``: open (in the candidate groups' pool), claimed, or done."""

    OPEN = "open"
    CLAIMED = "claimed"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


# A task someone may still act on: the inbox's statuses.
ACTIVE_TASK_STATES = (TaskStatus.OPEN, TaskStatus.CLAIMED)


class TaskKind(StrEnum):
    """``bpm_task.kind``: a user task of the diagram, or a task an SLA milestone opened."""

    BPMN = "bpmn"
    ESCALATION = "escalation"


class TimerStatus(StrEnum):
    """``bpm_timer.status``. Only a waiting timer is claimed and fired; an SLA milestone is
    paused while its task's clock is."""

    WAITING = "waiting"
    PAUSED = "paused"
    FIRED = "fired"
    CANCELLED = "cancelled"
    FAILED = "failed"


# A timer that may still fire (a paused milestone waits for its task's clock to resume).
ACTIVE_TIMER_STATES = (TimerStatus.WAITING, TimerStatus.PAUSED)


class TimerKind(StrEnum):
    """``bpm_timer.kind``: a BPMN timer event, an SLA milestone of a human task, or a
    schedule's next slot."""

    BPMN = "bpmn"
    SLA = "sla"
    SCHEDULE = "schedule"
    # A milestone of a case's whole-case deadline (bpm_case_clock).
    CASE = "case"


class User(Base):
    __tablename__ = "bpm_user"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128))
    password_hash: Mapped[str | None] = mapped_column(String(256))
    branch_code: Mapped[str | None] = mapped_column(String(32))
    email: Mapped[str | None] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The language the pages speak to this person in ("zh_CN", "en"); None: the default, Chinese.
    locale: Mapped[str | None] = mapped_column(String(16))


class Group(Base):
    """A candidate group, a job role or a service group: anything tasks are offered to."""

    __tablename__ = "bpm_group"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(32), default="role")


class GroupMember(Base):
    __tablename__ = "bpm_group_member"

    group_id: Mapped[int] = mapped_column(ForeignKey("bpm_group.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("bpm_user.id"), primary_key=True)

    __table_args__ = (Index("ix_group_member_user", "user_id"),)


class ApiToken(Base):
    """Only the SHA-256 of a token is stored; the token itself is shown once."""

    __tablename__ = "bpm_api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("bpm_user.id"))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(64), default="api")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Every token expires (engine.access.identity.issue_token); migration 0009 gave the
    # tokens issued before that an expiry.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Deployment(Base):
    __tablename__ = "bpm_deployment"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    deployed_by: Mapped[str | None] = mapped_column(String(64))
    deployed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    files: Mapped[list[str]] = mapped_column(JSON)


class ProcessVersion(Base):
    """Immutable once written: the XML, the serialized spec (stored once, not per instance)
    and the forms it references."""

    __tablename__ = "bpm_process_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    process_key: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str | None] = mapped_column(String(256))
    deployment_id: Mapped[int] = mapped_column(ForeignKey("bpm_deployment.id"))
    source_file: Mapped[str] = mapped_column(String(256))
    # Large and rarely needed on the hot path (the spec is cached per version): load on access.
    bpmn_xml: Mapped[str] = mapped_column(Text, deferred=True)
    spec_json: Mapped[str] = mapped_column(Text, deferred=True)
    forms: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Names of messages that start this process (message start events).
    start_messages: Mapped[list[str]] = mapped_column(JSON)
    # Every start event of the process: ``{"kind": "none"|"message"|"timer", "event_id",
    # "name", "message"}`` (engine.process.deployments.start_routes). A start over the API
    # needs a ``none`` route; without one the process starts only by message or timer.
    start_routes: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # camunda:candidateStarterGroups of the process; empty: any signed-in user may start it.
    starter_groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Process property reportVariables: which variables the instances' facts carry.
    report_variables: Mapped[list[str] | None] = mapped_column(JSON)
    # Process property businessKeyFormat, e.g. "CMP-{yyyymmdd}-{seq:4}": numbers a case
    # started without a business key.
    business_key_format: Mapped[str | None] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # A rollback: the earlier version whose diagram and forms this one deploys again.
    redeployed_from: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (UniqueConstraint("process_key", "version", name="uq_process_version"),)


class ProcessDraft(Base):
    """The diagram process owners are editing in the browser: one per process, shared, so
    two owners see each other's saves. ``revision`` counts saves and is the pages' ETag: a
    save names the revision it started from, and a stale one is refused, never merged."""

    __tablename__ = "bpm_process_draft"

    process_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    based_on_version: Mapped[int] = mapped_column(Integer)
    bpmn_xml: Mapped[str] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(Integer)
    saved_by: Mapped[str] = mapped_column(String(64))
    saved_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The draft's own forms (form key -> JSON Schema), once an owner saved or imported one;
    # None: the based-on version's forms.
    forms: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ProcessInstance(Base):
    __tablename__ = "bpm_process_instance"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    process_version_id: Mapped[int] = mapped_column(ForeignKey("bpm_process_version.id"))
    process_key: Mapped[str] = mapped_column(String(128))
    business_key: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    client_id: Mapped[str | None] = mapped_column(String(64))
    branch_code: Mapped[str | None] = mapped_column(String(32))
    # Instance-only state: the spec lives once in bpm_process_version.
    state: Mapped[bytes] = mapped_column(LargeBinary)
    # Which task ids are currently projected (open tasks, subscriptions, timers), so a
    # change can diff in memory instead of reading three tables back.
    projected: Mapped[dict[str, str]] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # The diagram's reportVariables as of the last save (severity, outcome, …): figures
    # and filters read these instead of deserializing every case.
    facts: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    started_by: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_by: Mapped[str | None] = mapped_column(String(64))
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Head of this instance's audit chain; the instance row lock serializes appends to it.
    audit_seq: Mapped[int] = mapped_column(Integer, default=0)
    audit_head: Mapped[str] = mapped_column(String(64), default="")

    __table_args__ = (
        UniqueConstraint("process_key", "business_key", name="uq_instance_business_key"),
        Index("ix_instance_status", "status", "process_key"),
        Index("ix_instance_client", "client_id"),
        Index("ix_instance_business_key", "business_key"),
    )


_OPEN = "status IN ('open', 'claimed')"
_UNBRANCHED = f"branch_code IS NULL AND {_OPEN}"


class Task(Base):
    """The inbox projection: one row per human task."""

    __tablename__ = "bpm_task"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_uuid: Mapped[str] = mapped_column(String(36), unique=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("bpm_process_instance.id"))
    process_key: Mapped[str] = mapped_column(String(128))
    element_id: Mapped[str] = mapped_column(String(128))
    name: Mapped[str | None] = mapped_column(String(256))
    lane: Mapped[str | None] = mapped_column(String(128))
    candidate_groups: Mapped[list[str]] = mapped_column(JSON)
    assignee: Mapped[str | None] = mapped_column(String(64))
    owner: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer, default=50)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    follow_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    completed_by: Mapped[str | None] = mapped_column(String(64))
    business_key: Mapped[str] = mapped_column(String(128))
    client_id: Mapped[str | None] = mapped_column(String(64))
    branch_code: Mapped[str | None] = mapped_column(String(32))
    form_key: Mapped[str | None] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16), default=TaskKind.BPMN.value, server_default=TaskKind.BPMN.value)
    # SLA clock (engine.sla.clock): where the due date came from, the clock's start, pauses.
    due_source: Mapped[str | None] = mapped_column(String(16))
    sla_policy_id: Mapped[int | None] = mapped_column(ForeignKey("bpm_sla_policy.id"))
    # The step's own choice of policy (its ``slaPolicy`` property), kept so a recompute after
    # a policy change chooses as the task's creation did.
    sla_policy_key: Mapped[str | None] = mapped_column(String(128))
    sla_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sla_paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Total wall-clock time the clock was paused ("waiting for client").
    sla_paused_seconds: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The pauses themselves, [[from, to], ...] in ISO 8601: the due date excludes them in the
    # target's own terms (business time for WD/TD/WH), measured again on every recompute.
    sla_pauses: Mapped[list[list[str]] | None] = mapped_column(JSON)
    # When the task turns "at risk" (80 % of the target in the target's own terms).
    at_risk_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    breached_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    calendar_incomplete: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Recusal: "user:<name>" and "group:<key>" principals that may not see, claim, complete
    # or be given this task (a complaint's subject and their service group; QA is not the
    # caller). Mirrored in bpm_task_exclusion for the inbox queries.
    excluded: Mapped[list[str] | None] = mapped_column(JSON)
    # An escalation task (kind "escalation"): the step it escalates. It closes with that step.
    escalated_task_id: Mapped[int | None] = mapped_column(BigId)

    __table_args__ = (
        # "my tasks", sorted by due time
        Index("ix_task_assignee_status_due", "assignee", "status", "due_at"),
        # "overdue" / "due soon" across everything open
        Index("ix_task_status_due", "status", "due_at"),
        Index("ix_task_instance", "instance_id"),
        Index("ix_task_business_key", "business_key"),
        # The inbox's order, open tasks only (migration 0013 writes NULLS LAST on PostgreSQL).
        # (migrations 0013 and 0019 write NULLS LAST and DESC where they belong)
        Index("ix_task_open_due", "due_at", "priority", "id", postgresql_where=text("status IN ('open', 'claimed')"),
              sqlite_where=text("status IN ('open', 'claimed')")),
        # A person's steps done, by when (已办, 已关注; migration 0025 added the time).
        Index("ix_task_completed_by_at", "completed_by", "completed_at",
              postgresql_where=text("completed_by IS NOT NULL"), sqlite_where=text("completed_by IS NOT NULL")),
        Index("ix_task_escalated", "escalated_task_id", postgresql_where=text("escalated_task_id IS NOT NULL"),
              sqlite_where=text("escalated_task_id IS NOT NULL")),
        # A branch's open tasks in due order (a branch head's lists and board; migration 0019).
        Index("ix_task_open_branch_due", "branch_code", "due_at", "priority", "id", postgresql_where=text(_OPEN),
              sqlite_where=text(_OPEN)),
        Index("ix_task_open_priority", "priority", "due_at", "id", postgresql_where=text(_OPEN),
              sqlite_where=text(_OPEN)),
        Index("ix_task_open_branch_priority", "branch_code", "priority", "due_at", "id", postgresql_where=text(_OPEN),
              sqlite_where=text(_OPEN)),
        Index("ix_task_open_unbranched_due", "due_at", "priority", "id", postgresql_where=text(_UNBRANCHED),
              sqlite_where=text(_UNBRANCHED)),
        Index("ix_task_open_unbranched_priority", "priority", "due_at", "id", postgresql_where=text(_UNBRANCHED),
              sqlite_where=text(_UNBRANCHED)),
        Index("ix_task_open_owner", "owner", postgresql_where=text(f"owner IS NOT NULL AND {_OPEN}"),
              sqlite_where=text(f"owner IS NOT NULL AND {_OPEN}")),
        # Work closed in a period (the overdue figure's, the board's trend; migration 0025).
        Index("ix_task_completed_at", "completed_at", postgresql_where=text("completed_at IS NOT NULL"),
              sqlite_where=text("completed_at IS NOT NULL")),
    )


class TaskCandidate(Base):
    """One row per (task, candidate group): "my groups' unclaimed tasks" is an index scan."""

    __tablename__ = "bpm_task_candidate"

    task_id: Mapped[int] = mapped_column(ForeignKey("bpm_task.id"), primary_key=True)
    group_key: Mapped[str] = mapped_column(String(128), primary_key=True)
    # Whether the task is still open: a trigger on the task's status keeps it (migration 0019),
    # and the inbox reads only active rows; a completed task's rows stay for the figures.
    active: Mapped[bool] = mapped_column(Boolean, server_default=true())
    # The open task's due date and priority, so a group's queue is read in the inbox's order
    # from its own index (migration 0024): the task's trigger keeps them, and a row written
    # without them takes them from its task.
    priority: Mapped[int | None] = mapped_column(Integer)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Whether someone holds the open task (migration 0025), kept so by the same trigger: a queue
    # of unclaimed tasks is then read from the group's rows alone.
    claimed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (Index("ix_task_candidate_group", "group_key", "task_id"),
                      # (migration 0024 writes NULLS LAST and DESC where they belong)
                      Index("ix_task_candidate_queue_due", "group_key", "due_at", "priority", "task_id",
                            postgresql_where=text("active"), sqlite_where=text("active")),
                      Index("ix_task_candidate_queue_priority", "group_key", "priority", "due_at", "task_id",
                            postgresql_where=text("active"), sqlite_where=text("active")))


class TaskExclusion(Base):
    """One row per (task, excluded principal); written only for tasks that recuse someone."""

    __tablename__ = "bpm_task_exclusion"

    task_id: Mapped[int] = mapped_column(ForeignKey("bpm_task.id"), primary_key=True)
    principal: Mapped[str] = mapped_column(String(160), primary_key=True)
    # The task's recusalScope is "case": the principal cannot read the case either.
    case_wide: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    # The tasks recusing one person (the board takes them out of its counts; migration 0025).
    __table_args__ = (Index("ix_task_exclusion_principal", "principal"),)


class MessageSubscription(Base):
    __tablename__ = "bpm_message_subscription"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("bpm_process_instance.id"))
    task_uuid: Mapped[str] = mapped_column(String(36), unique=True)
    element_id: Mapped[str] = mapped_column(String(128))
    message_name: Mapped[str] = mapped_column(String(128))
    correlation_key: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_subscription_lookup", "message_name", "correlation_key"),)


class MessageReceipt(Base):
    """An inbound message accepted under an idempotency key (the ``Idempotency-Key`` header
    or the message's ``message_id``). A repeat from the same sender with the same message
    name and key gets the first answer, the case the message reached or started, instead of
    a second delivery; the same key with another correlation key or payload is refused.
    A receipt counts for ``BPM_IDEMPOTENCY_HOURS`` (engine.process.messages.receive)."""

    __tablename__ = "bpm_message_receipt"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sender: Mapped[str] = mapped_column(String(64))
    message_name: Mapped[str] = mapped_column(String(128))
    idempotency_key: Mapped[str] = mapped_column(String(128))
    # SHA-256 of the correlation key and payload, to tell a repeat from a different message.
    request_sha256: Mapped[str] = mapped_column(String(64))
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("bpm_process_instance.id"))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        UniqueConstraint("sender", "message_name", "idempotency_key", name="uq_message_receipt_key"),
        Index("ix_message_receipt_received", "received_at"),
    )


class Timer(Base):
    """A waiting timer: a BPMN timer event ("bpmn"), an SLA milestone of a human task
    ("sla") or a scheduled process start ("schedule"). The database, not the queue, is the
    source of truth."""

    __tablename__ = "bpm_timer"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default=TimerKind.BPMN.value, server_default=TimerKind.BPMN.value)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("bpm_process_instance.id"))
    # The BPMN timer task, or the human task an SLA milestone belongs to.
    task_uuid: Mapped[str | None] = mapped_column(String(36))
    element_id: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    fired_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Failed firings (not counting the database being away); "failed" after too many.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_timer_status_due", "status", "due_at"),
        Index("ix_timer_task", "task_uuid"),
    )


class CaseClock(Base):
    """A case's own deadline, beside its steps' (a complaint's 限时办结: 15 or 30 working days
    from its arrival): when it is due, how it moved, and the milestones that warn about it
    (``[{"at": 0.8, "to": ["branch:branch_cs_director", "compliance"]}]``, fractions of the
    span from ``started_at`` to ``due_at``). Stopped when the case has answered."""

    __tablename__ = "bpm_case_clock"

    instance_id: Mapped[int] = mapped_column(BigId, ForeignKey("bpm_process_instance.id"), primary_key=True)
    policy: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The deadline before any extension.
    base_due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    milestones: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    extended_by: Mapped[str | None] = mapped_column(String(32))  # e.g. "10 WD"
    extended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    breached_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_case_clock_due", "due_at"),)


class AuditStream(Base):
    """Chain heads for streams that are not an instance (deployments, users)."""

    __tablename__ = "bpm_audit_stream"

    stream: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    head: Mapped[str] = mapped_column(String(64))


class AuditEvent(Base):
    """Append-only. ``hash`` covers the event and the previous event's hash of the stream."""

    __tablename__ = "bpm_audit_event"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    stream: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    instance_id: Mapped[int | None] = mapped_column(BigId)
    task_uuid: Mapped[str | None] = mapped_column(String(36))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))

    __table_args__ = (
        UniqueConstraint("stream", "seq", name="uq_audit_stream_seq"),
        Index("ix_audit_instance", "instance_id", "seq"),
    )


class CalendarDay(Base):
    """One row per date: 工作日 (State Council holidays and 调休 make-up days) and 交易日."""

    __tablename__ = "bpm_calendar_day"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    working: Mapped[bool] = mapped_column(Boolean)
    trading: Mapped[bool] = mapped_column(Boolean)
    name: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32))
    updated_by: Mapped[str | None] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class BusinessHoursRow(Base):
    __tablename__ = "bpm_business_hours"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    tz: Mapped[str] = mapped_column(String(64))
    # [["09:00", "11:30"], ["13:00", "17:00"]]
    periods: Mapped[list[list[str]]] = mapped_column(JSON)


class Setting(Base):
    """Small engine-wide values, e.g. the calendar revision that invalidates caches."""

    __tablename__ = "bpm_setting"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Counter(Base):
    """Named counters, e.g. "CMP-20250612-" for the day's complaint case numbers."""

    __tablename__ = "bpm_counter"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class SlaPolicy(Base):
    """Which tasks it applies to, the target on a calendar, milestones, pause rule.
    Ordered by ``position``; the first active match wins."""

    __tablename__ = "bpm_sla_policy"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(128), unique=True)
    name: Mapped[str] = mapped_column(String(256))
    position: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    process_key: Mapped[str | None] = mapped_column(String(128))
    element_id: Mapped[str | None] = mapped_column(String(128))
    lane: Mapped[str | None] = mapped_column(String(128))
    min_priority: Mapped[int | None] = mapped_column(Integer)
    # Instance variables that must match, e.g. {"vip_tier": "diamond"}.
    match_data: Mapped[dict[str, Any]] = mapped_column(JSON)
    target_amount: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    target_unit: Mapped[str] = mapped_column(String(8))
    business_hours: Mapped[str] = mapped_column(String(64))
    # [{"at": 0.5, "action": "notify", "to": "assignee"}, {"at": 1.0, "action": "escalate",
    #   "to": "branch:branch_head"}]
    milestones: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    pausable: Mapped[bool] = mapped_column(Boolean, default=True)
    # A variable holding the moment the clock counts from (the account's opening, the
    # 12386 transfer's receipt), when that is earlier than the task's creation.
    anchor_variable: Mapped[str | None] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_by: Mapped[str | None] = mapped_column(String(64))


class Notification(Base):
    """The outbox: written in the transaction, delivered by a notifier after commit."""

    __tablename__ = "bpm_notification"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(String(32))
    recipient: Mapped[str] = mapped_column(String(128))
    subject: Mapped[str] = mapped_column(String(256))
    body: Mapped[str] = mapped_column(Text)
    instance_id: Mapped[int | None] = mapped_column(BigId)
    task_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    # A deliverer's claim while it sends (engine.notify): no other deliverer takes the row
    # until the claim's lease has run out.
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    # When the recipient marked it read on their notifications page.
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_notification_pending", "sent_at", "id"),
                      Index("ix_notification_recipient", "recipient", "id"))


class BoardSnapshot(Base):
    """The supervisors' board counted for the whole firm at one moment (``as_of``), so a
    board page reads a few thousand counted rows instead of every open task
    (engine.brokerage.board_snapshot). Kept until the next one is complete."""

    __tablename__ = "bpm_board_snapshot"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    as_of: Mapped[datetime] = mapped_column(UTCDateTime())
    # The overdue figure's period (the year to date at ``as_of``): its work closed late.
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    took_ms: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_board_snapshot_as_of", "as_of"),)


class BoardCell(Base):
    """One board row's counts for one branch and process: the board of any scope (a branch
    with the tasks tied to none, the firm) is a sum of cells. ``branch_code`` and ``key`` are
    "" for none (no branch; nobody holds it; no group queue)."""

    __tablename__ = "bpm_board_cell"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    snapshot_id: Mapped[int] = mapped_column(ForeignKey("bpm_board_snapshot.id"))
    dimension: Mapped[str] = mapped_column(String(8))
    branch_code: Mapped[str] = mapped_column(String(32))
    process_key: Mapped[str] = mapped_column(String(128))
    key: Mapped[str] = mapped_column(String(320))
    name: Mapped[str | None] = mapped_column(String(256))  # a step's name
    # The board's counts (engine.process.board), over the open tasks.
    open: Mapped[int] = mapped_column(Integer, default=0)
    breached: Mapped[int] = mapped_column(Integer, default=0)
    at_risk: Mapped[int] = mapped_column(Integer, default=0)
    paused: Mapped[int] = mapped_column(Integer, default=0)
    undated: Mapped[int] = mapped_column(Integer, default=0)
    oldest_breach: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The overdue figure's (engine.brokerage.figures.overdue_tasks), beside them on the page.
    overdue: Mapped[int] = mapped_column(Integer, default=0)
    late_at_risk: Mapped[int] = mapped_column(Integer, default=0)
    closed_late: Mapped[int] = mapped_column(Integer, default=0)
    regulatory: Mapped[int] = mapped_column(Integer, default=0)
    ageing: Mapped[list[int] | None] = mapped_column(JSON)  # overdue tasks per ageing bucket

    __table_args__ = (Index("ix_board_cell_read", "snapshot_id", "dimension", "branch_code"),)


class BoardWeek(Base):
    """One branch's week of the board's 12-week trend at the snapshot's moment."""

    __tablename__ = "bpm_board_week"

    snapshot_id: Mapped[int] = mapped_column(ForeignKey("bpm_board_snapshot.id"),
                                             primary_key=True)
    branch_code: Mapped[str] = mapped_column(String(32), primary_key=True)
    week_start: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    breached: Mapped[int] = mapped_column(Integer)
    completed: Mapped[int] = mapped_column(Integer)
    on_time: Mapped[int] = mapped_column(Integer)


class Comment(Base):
    """A note on a case by someone who may read it; audited on the case like every change."""

    __tablename__ = "bpm_comment"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("bpm_process_instance.id"))
    author: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_comment_instance", "instance_id", "id"),)


class TaskDraft(Base):
    """A half-filled task form, kept for the person filling it until they complete the task."""

    __tablename__ = "bpm_task_draft"

    task_id: Mapped[int] = mapped_column(ForeignKey("bpm_task.id"), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    saved_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SavedView(Base):
    """A named inbox filter (the inbox's query string) a person keeps."""

    __tablename__ = "bpm_saved_view"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    query: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (UniqueConstraint("username", "name", name="uq_saved_view_name"),)


class Schedule(Base):
    """Start a process on a business-calendar rule, e.g. the first working day of each
    quarter at 09:00 (periodic callback batches)."""

    __tablename__ = "bpm_schedule"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(128), unique=True)
    process_key: Mapped[str] = mapped_column(String(128))
    rule: Mapped[str] = mapped_column(String(64))
    at_time: Mapped[str] = mapped_column(String(5))
    business_hours: Mapped[str] = mapped_column(String(64))
    catch_up: Mapped[str] = mapped_column(String(8))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


# -- client registry and classification ----------------------------------------------------
class Branch(Base):
    """营业部."""

    __tablename__ = "bpm_branch"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    city: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ServiceGroup(Base):
    """客户服务小组: the registry side of a ``bpm_group`` of kind ``service_group``.

    Members are the staff whose ``bpm_staff.service_group_key`` names the group, mirrored
    as ``bpm_group_member`` rows so the group works as a candidate group; only
    ``engine.registry`` writes either, and always both."""

    __tablename__ = "bpm_service_group"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("bpm_group.id"), unique=True)
    branch_code: Mapped[str] = mapped_column(ForeignKey("bpm_branch.code"))
    lead_user_id: Mapped[int | None] = mapped_column(ForeignKey("bpm_user.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_service_group_branch", "branch_code"),)


class StaffProfile(Base):
    """What the registry knows about a ``bpm_user`` who is staff: branch, job roles, whether
    they are middle/back office (中后台), and their one service group (a job role plus
    membership of at most one group, docs/domain.md#service-groups, so a column, not a link
    table)."""

    __tablename__ = "bpm_staff"

    user_id: Mapped[int] = mapped_column(ForeignKey("bpm_user.id"), primary_key=True)
    staff_no: Mapped[str | None] = mapped_column(String(32), unique=True)
    branch_code: Mapped[str | None] = mapped_column(ForeignKey("bpm_branch.code"))
    job_roles: Mapped[list[str]] = mapped_column(JSON)
    back_office: Mapped[bool] = mapped_column(Boolean, default=False)
    service_group_key: Mapped[str | None] = mapped_column(ForeignKey("bpm_service_group.key"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_staff_service_group", "service_group_key"),)


class ClassRuleSet(Base):
    """One version of the classification standard (docs/domain.md#classification) and VIP
    thresholds (docs/domain.md#vip).

    Immutable once written, except ``effective_to``, which the next version of the same
    scope sets. ``scope`` is ``company`` or a branch code (a branch adjustment approved by
    经纪业务管理总部, the brokerage's procedures). ``bands``: ``[{"min_assets": "0", "active": "G",
    "inactive": "G"}, …]`` in ascending ``min_assets``; a client is in the last band whose
    lower bound (inclusive) they reach, and "active" means turnover ≥ the threshold. Money
    is kept as decimal strings in JSON."""

    __tablename__ = "bpm_class_rule_set"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer)
    effective_from: Mapped[date] = mapped_column(Date)
    effective_to: Mapped[date | None] = mapped_column(Date)
    turnover_threshold: Mapped[Decimal] = mapped_column(Numeric(10, 4))
    bands: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    vip_thresholds: Mapped[dict[str, str]] = mapped_column(JSON)
    downgrade_grace_months: Mapped[int] = mapped_column(Integer)
    approved_by: Mapped[str] = mapped_column(String(64))
    note: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (UniqueConstraint("scope", "version", name="uq_class_rule_set_version"),)


class Client(Base):
    """A client (客户) of a branch, assigned to a service group or to the branch pool
    (``service_group_key`` empty), never to an individual.

    ``id_number``, ``phone`` and ``account_number`` are stored in full and leave the engine
    masked (``engine.client_access``).

    VIP tier: ``vip_tier`` and ``tier_since`` are the *effective* tier, the one the client is
    served at; after the registry creates a client only the VIP case changes them, at its
    activation, downgrade or closure step (``engine.vip_tier``). The monthly evaluation
    (``engine.classification.evaluate``) writes ``classification`` … ``classified_on``,
    ``evaluated_tier`` (the tier the rules give the client's assets, which may be waiting for
    a welcome call or an approval, or be refused) and ``downgrade_grace_until`` (the client is
    below the effective tier: a downgrade is pending until the case applies it or the assets
    recover)."""

    __tablename__ = "bpm_client"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    branch_code: Mapped[str] = mapped_column(ForeignKey("bpm_branch.code"))
    service_group_key: Mapped[str | None] = mapped_column(ForeignKey("bpm_service_group.key"))
    birth_date: Mapped[date | None] = mapped_column(Date)
    id_number: Mapped[str | None] = mapped_column(String(32))
    phone: Mapped[str | None] = mapped_column(String(32))
    account_number: Mapped[str | None] = mapped_column(String(32))
    # 日均总资产 of the evaluation month and annualised turnover, from the account system.
    assets: Mapped[Decimal] = mapped_column(Numeric(18, 2))
    turnover: Mapped[Decimal] = mapped_column(Numeric(10, 4))
    risk_level: Mapped[str | None] = mapped_column(String(8))
    c1_lowest: Mapped[bool] = mapped_column(Boolean, default=False)
    operating_habit: Mapped[str | None] = mapped_column(String(16))
    classification: Mapped[str | None] = mapped_column(String(4))
    class_rule_set_id: Mapped[int | None] = mapped_column(ForeignKey("bpm_class_rule_set.id"))
    classified_on: Mapped[date | None] = mapped_column(Date)
    vip_tier: Mapped[str | None] = mapped_column(String(16))
    tier_since: Mapped[date | None] = mapped_column(Date)
    evaluated_tier: Mapped[str | None] = mapped_column(String(16))
    downgrade_grace_until: Mapped[date | None] = mapped_column(Date)
    # active, dormant (休眠账户) or suspended (中止交易账户), from the account system: dormant and
    # suspended accounts are outside the periodic callback quota's base and sample (a
    # regulatory rule, docs/domain.md#periodic-sampling); closed (销户) once a full closure
    # completes (engine.brokerage.closure).
    account_status: Mapped[str] = mapped_column(String(16), default="active", server_default="active")
    # 拒绝回访/免打扰: the client asked not to be called for marketing (a callback's do-not-call
    # message sets it, engine.brokerage.do_not_call); regulatory callbacks still go on, in writing.
    dnc_marketing: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    dnc_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_client_branch_group", "branch_code", "service_group_key"),
        Index("ix_client_service_group", "service_group_key"),
    )


# -- supervisors' figures (docs/figures.md) -----------------------------------------------
class ClientSnapshot(Base):
    """One client's figures for one period (usually a month), imported from the account
    system (``bpm figures import-snapshot``) for the service-group assessment (the brokerage's
    procedures).

    ``branch_code`` and ``service_group_key`` are the client's branch and group *in that
    period* (clients move between groups; a month's growth belongs to the group that served
    it); an empty group is the branch pool. ``net_inflow`` is 追加资金 (deposits and securities
    transferred in at market value, minus withdrawals and transfers out), ``traded_amount``
    is 成交金额 (buy + sell) and ``avg_assets`` 日均总资产, both over the period."""

    __tablename__ = "bpm_client_snapshot"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    period_start: Mapped[date] = mapped_column(Date)
    period_end: Mapped[date] = mapped_column(Date)
    client_id: Mapped[str] = mapped_column(String(64))
    branch_code: Mapped[str] = mapped_column(String(32))
    service_group_key: Mapped[str | None] = mapped_column(String(64))
    assets_start: Mapped[Decimal] = mapped_column(Numeric(18, 2))
    assets_end: Mapped[Decimal] = mapped_column(Numeric(18, 2))
    net_inflow: Mapped[Decimal] = mapped_column(Numeric(18, 2))
    traded_amount: Mapped[Decimal] = mapped_column(Numeric(20, 2))
    avg_assets: Mapped[Decimal] = mapped_column(Numeric(18, 2))
    referrals: Mapped[int] = mapped_column(Integer, default=0)
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime())
    imported_by: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        UniqueConstraint("period_start", "period_end", "client_id", name="uq_client_snapshot_period"),
        # The assessment reads one period's rows of a branch, grouped by service group.
        Index("ix_client_snapshot_scope", "period_start", "period_end", "branch_code", "service_group_key"),
    )
