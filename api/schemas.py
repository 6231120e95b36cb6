"""marshmallow schemas: what the API accepts and returns (and what OpenAPI documents)."""

from __future__ import annotations

import re
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from api.context import bpm
from engine.access import client_access
from engine.brokerage import classification
from engine.calendars import EARLIEST_DAY, LATEST_DAY, MAX_SCAN_DAYS, Unit
from engine.models import ACTIVE_TASK_STATES, InstanceStatus, TaskStatus, TimerStatus
from engine.sla import clock as sla_clock
from engine.sla import milestones


class DecimalText(fields.Decimal):
    """A decimal (money, a target, a threshold) served as a JSON string, "300000" or "3.4000":
    binary floating point would round it. It is taken as such a string or as a JSON number;
    nothing else (not "1e5", not " 1", not true)."""

    PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"
    _TEXT = re.compile(PATTERN)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(as_string=True, **kwargs)

    def _validated(self, value: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)) or (
                isinstance(value, str) and not self._TEXT.fullmatch(value)):
            raise self.make_error("invalid")
        return super()._validated(value)


# Numbers the database stores in 32-bit integer columns, and the offset of a page: a larger
# one would overflow the column or the query instead of being refused.
INT32 = validate.Range(-(2**31), 2**31 - 1)
OFFSET = validate.Range(min=0, max=2**31 - 1)
# "Due within N hours" and ageing buckets reach at most as far as a due date is ever
# computed (engine.calendars.MAX_SCAN_DAYS, about ten years).
MAX_HOURS = MAX_SCAN_DAYS * 24


class Flag(fields.Boolean):
    """A JSON ``true`` or ``false`` in a body, as the document says; 1, 0, "yes" or "true"
    are not taken for one. (Query parameters, text by nature, keep the lenient Boolean.)"""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class Real(fields.Float):
    """A JSON number in a body; a string that holds one ("0.5") is not taken for it."""

    def _validated(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        return super()._validated(value)


_YEARS = "(199[0-9]|20[0-9]{2})"  # engine.calendars.EARLIEST_DAY to LATEST_DAY
_MONTH_DAY = "(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"


class Day(fields.Date):
    """A calendar day (ISO 8601) the engine takes from people and systems: from
    engine.calendars.EARLIEST_DAY (1990) to LATEST_DAY (2099); year 1 or 9999 is refused."""

    PATTERN = f"^{_YEARS}-{_MONTH_DAY}$"

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date:
        day: date = super()._deserialize(value, attr, data, **kwargs)
        if not EARLIEST_DAY <= day <= LATEST_DAY:
            raise ValidationError(f"must lie between {EARLIEST_DAY} and {LATEST_DAY}")
        return day


class Moment(fields.AwareDateTime):
    """A moment with its offset (ISO 8601), on a day :class:`Day` accepts."""

    PATTERN = (f"^{_YEARS}-{_MONTH_DAY}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]+)?"
               "(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")
    _TEXT = re.compile(PATTERN)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        # RFC 3339 as the document says (seconds and an offset), not every form ISO 8601 allows.
        if not isinstance(value, str) or not self._TEXT.fullmatch(value):
            raise ValidationError("a date-time with seconds and an offset, e.g. 2025-06-16T10:00:00+08:00, "
                                  f"from {EARLIEST_DAY} to {LATEST_DAY}")
        moment: datetime = super()._deserialize(value, attr, data, **kwargs)
        if not EARLIEST_DAY <= moment.date() <= LATEST_DAY:
            raise ValidationError(f"must lie between {EARLIEST_DAY} and {LATEST_DAY}")
        return moment


class FieldErrorOut(Schema):
    field = fields.String(required=True, metadata={"description": (
        "where the offending value is: its path with segments joined by '/' (a request body "
        "member 'milestones/0/action', a query parameter 'limit', a form field 'contacts/0/phone', "
        "a variable 'set/amount'); '' for the input as a whole; for deployment_invalid, the file")})
    message = fields.String(required=True)
    file = fields.String(metadata={"description": "deployment_invalid only: the bundle file"})
    line = fields.Integer(allow_none=True, metadata={"description": "deployment_invalid only"})
    element_id = fields.String(allow_none=True, metadata={"description": "deployment_invalid only"})


class ProblemDetailsOut(Schema):
    """Every error response: ``application/problem+json`` (RFC 9457)."""

    class Meta:
        unknown = INCLUDE  # some codes add members, e.g. duplicate_business_key's instance_id

    type = fields.String(metadata={"description": "always about:blank"})
    status = fields.Integer()
    code = fields.String(metadata={"description": "stable machine-readable code, e.g. form_invalid"})
    title = fields.String()
    detail = fields.String()
    errors = fields.List(fields.Nested(FieldErrorOut), metadata={"description": (
        "on every 422 (invalid_request, form_invalid, data_invalid, deployment_invalid): "
        "one entry per problem, never empty")})


class LoginIn(Schema):
    username = fields.String(required=True)
    password = fields.String(required=True, load_only=True)


class TokenOut(Schema):
    token = fields.String()
    username = fields.String()
    expires_at = fields.DateTime(metadata={"description": "when the token stops working"})


class UsernameIn(Schema):
    username = fields.String(required=True, validate=validate.Length(min=1, max=64))


class RevokedOut(Schema):
    username = fields.String()
    revoked = fields.Integer(metadata={"description": "how many tokens stopped working"})


class UnlockedOut(Schema):
    username = fields.String()
    was_locked = fields.Boolean(metadata={"description": "whether the username was locked, rather than only "
                                                         "waiting between attempts or not throttled at all"})


class MeOut(Schema):
    username = fields.String()
    groups = fields.List(fields.String())
    branch_code = fields.String(allow_none=True)


class StartRouteOut(Schema):
    kind = fields.String(metadata={"description": "none, message or timer"})
    event_id = fields.String()
    name = fields.String(allow_none=True)
    message = fields.String(metadata={"description": "the message that starts it (kind message)"})


class VersionOut(Schema):
    id = fields.Integer()
    process_key = fields.String()
    version = fields.Integer()
    name = fields.String(allow_none=True)
    sha256 = fields.String()
    source_file = fields.String()
    deployment_id = fields.Integer()
    start_messages = fields.List(fields.String())
    start_routes = fields.List(fields.Nested(StartRouteOut), metadata={"description": (
        "every start event of the process: kind none (POST /processes/{key}/instances), "
        "message (POST /messages with the message name) or timer")})
    created_at = fields.DateTime()
    redeployed_from = fields.Integer(allow_none=True, metadata={
        "description": "a rollback: the earlier version whose diagram and forms this one deploys again"})


class DeployedOut(VersionOut):
    created = fields.Boolean()


class DeployOut(Schema):
    versions = fields.List(fields.Nested(DeployedOut))


class RedeployIn(Schema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=500),
                           metadata={"description": "why the earlier version comes back (audited)"})
    if_latest = fields.Integer(load_default=None, validate=validate.Range(min=1), metadata={
        "description": "the latest version the caller saw when deciding; another deployed since: 409"})


class ProblemOut(Schema):
    file = fields.String()
    line = fields.Integer(allow_none=True)
    element_id = fields.String(allow_none=True)
    message = fields.String()


class CheckOut(Schema):
    ok = fields.Boolean()
    problems = fields.List(fields.Nested(ProblemOut))
    warnings = fields.List(fields.Nested(ProblemOut), metadata={
        "description": "accepted, but worth a look: two forms on one path writing one field name"})


class DeployQuery(Schema):
    check = fields.Boolean(load_default=False, metadata={"description": "validate only, store nothing"})


class StartIn(Schema):
    business_key = fields.String(load_default=None, validate=validate.Length(min=1, max=128), metadata={
        "description": "omit to number the case by the process's businessKeyFormat (CMP-20250612-0001)"})
    data = fields.Dict(keys=fields.String(), load_default=dict)
    client_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=64))
    branch_code = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=32))


class WithheldOut(Schema):
    """Variables of one field group left out of a response (docs/domain.md#case-visibility; the
    policy is ``workflows/field_policy/<process>.json``). They are absent, never replaced by a
    value."""

    group = fields.String(metadata={"description": "the policy's field group, e.g. staff_conduct"})
    title = fields.String(metadata={"description": "what the group is, to show in place of the values"})
    fields_ = fields.List(fields.String(), attribute="fields", data_key="fields",
                          metadata={"description": "the withheld variable names"})


_WITHHELD_DOC = ("variables of the case this caller may not see, by field group; they are left out of "
                 "facts and data. Empty: nothing was withheld")


class InstanceOut(Schema):
    id = fields.Integer()
    process_key = fields.String()
    process_version_id = fields.Integer()
    business_key = fields.String()
    status = fields.String()
    client_id = fields.String(allow_none=True)
    branch_code = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    started_by = fields.String(allow_none=True)
    started_at = fields.DateTime()
    ended_by = fields.String(allow_none=True)
    ended_at = fields.DateTime(allow_none=True)
    facts = fields.Dict(allow_none=True, metadata={"description": "the diagram's reportVariables"})
    withheld = fields.List(fields.Nested(WithheldOut), metadata={"description": _WITHHELD_DOC})


class CaseClockOut(Schema):
    policy = fields.String()
    started_at = fields.DateTime()
    due_at = fields.DateTime(metadata={"description": "when the whole case is due (限时办结), extension included"})
    base_due_at = fields.DateTime(metadata={"description": "the deadline before any extension"})
    extended_by = fields.String(allow_none=True, metadata={"description": "the approved extension, e.g. 10 WD"})
    extended_at = fields.DateTime(allow_none=True)
    stopped_at = fields.DateTime(allow_none=True, metadata={"description": "when the case answered"})
    breached_at = fields.DateTime(allow_none=True)
    state = fields.String(metadata={"description": "running, breached, met or late"})


class InstanceDetailOut(InstanceOut):
    data = fields.Dict()
    case_clock = fields.Nested(CaseClockOut, allow_none=True, metadata={
        "description": "the case's own deadline, for a process that keeps one (complaints); else null"})


class InstanceQuery(Schema):
    process = fields.String(load_default=None)
    status = fields.String(load_default=None, validate=validate.OneOf(list(InstanceStatus)))
    business_key = fields.String(load_default=None)
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 500))
    offset = fields.Integer(load_default=0, validate=OFFSET)


class CancelIn(Schema):
    reason = fields.String(load_default="", validate=validate.Length(max=1000))


class OwnerIn(Schema):
    username = fields.String(required=True, validate=validate.Length(min=1, max=64),
                             metadata={"description": "who owns the case's client contact from now on"})
    reason = fields.String(required=True, validate=validate.Length(min=1, max=1000),
                           metadata={"description": "why (an absence, a leave): audited on the case"})


class OwnerOut(Schema):
    instance_id = fields.Integer()
    business_key = fields.String()
    previous_owner = fields.String()
    owner = fields.String()
    reason = fields.String()
    moved_tasks = fields.List(fields.Integer(), metadata={
        "description": "the open steps the previous owner held by the ownership that moved to the new owner"})


class DataCorrectionIn(Schema):
    set = fields.Dict(keys=fields.String(), values=fields.Raw(allow_none=True), load_default=dict,
                      metadata={"description": "variables to set, name to new value"})
    remove = fields.List(fields.String(), load_default=list, metadata={"description": "variables to remove"})
    reason = fields.String(required=True, validate=validate.Length(min=1, max=1000),
                           metadata={"description": "why the data was wrong (kept in the audit trail)"})


class HistoryOut(Schema):
    seq = fields.Integer()
    kind = fields.String()
    actor = fields.String(allow_none=True)
    occurred_at = fields.DateTime()
    task_uuid = fields.String(allow_none=True)
    data = fields.Dict()
    withheld = fields.List(fields.Nested(WithheldOut), metadata={"description": (
        "variables left out of this event's data, payload or old/new values, by field group")})


class ElementStateOut(Schema):
    element_id = fields.String()
    name = fields.String(allow_none=True)
    state = fields.String(validate=validate.OneOf(["completed", "active", "waiting", "failed", "cancelled"]))
    count = fields.Integer(metadata={"description": "how many times it completed (a loop counts each time)"})
    sla_state = fields.String(allow_none=True, metadata={"description": "an open person's step: its SLA state"})
    due_at = fields.DateTime(allow_none=True)


class ActivityOut(Schema):
    instance_id = fields.Integer()
    process_key = fields.String()
    version = fields.Integer(metadata={"description": "the version the case runs on: its diagram is "
                                                      "GET /processes/{process_key}/versions/{version}/bpmn"})
    elements = fields.List(fields.Nested(ElementStateOut))
    flows = fields.List(fields.String(), metadata={"description": "ids of the sequence flows taken"})


class CommentIn(Schema):
    body = fields.String(required=True, validate=validate.Length(min=1, max=4000))


class CommentOut(Schema):
    id = fields.Integer()
    author = fields.String()
    body = fields.String(metadata={"description": "identifiers in it masked"})
    created_at = fields.DateTime()


class TaskOut(Schema):
    id = fields.Integer()
    instance_id = fields.Integer()
    process_key = fields.String()
    element_id = fields.String()
    name = fields.String(allow_none=True)
    lane = fields.String(allow_none=True)
    candidate_groups = fields.List(fields.String())
    assignee = fields.String(allow_none=True)
    owner = fields.String(allow_none=True)
    status = fields.String()
    priority = fields.Integer()
    created_at = fields.DateTime()
    due_at = fields.DateTime(allow_none=True)
    follow_up_at = fields.DateTime(allow_none=True)
    completed_at = fields.DateTime(allow_none=True)
    completed_by = fields.String(allow_none=True)
    business_key = fields.String()
    client_id = fields.String(allow_none=True)
    branch_code = fields.String(allow_none=True)
    form_key = fields.String(allow_none=True)
    kind = fields.String()
    due_source = fields.String(allow_none=True, metadata={"description": "diagram or policy"})
    calendar_incomplete = fields.Boolean(
        metadata={"description": "the due date needed days the calendar does not know yet"})
    breached_at = fields.DateTime(allow_none=True)
    sla_paused_at = fields.DateTime(allow_none=True)
    sla_state = fields.Method("_sla_state", metadata={
        "description": "on_track, at_risk, breached, paused or none; a finished task: breached or closed"})
    seconds_to_breach = fields.Method("_seconds_to_breach", allow_none=True)

    def _sla_state(self, task: Any) -> str:
        return sla_clock.state(task, bpm().runtime.now())[0]

    def _seconds_to_breach(self, task: Any) -> float | None:
        return sla_clock.state(task, bpm().runtime.now())[1]


class TaskCompletedOut(TaskOut):
    next_tasks = fields.List(fields.Nested(TaskOut), metadata={
        "description": "tasks this completion opened that the caller may see (their next step); "
                       "others' new tasks are in their inboxes"})


class TaskDetailOut(TaskOut):
    form = fields.Dict(allow_none=True, metadata={"description": "the task's JSON Schema form"})


class TaskQuery(Schema):
    assignee = fields.String(load_default=None, validate=validate.Length(min=1, max=64), metadata={
        "description": "me: the caller's own tasks; a username: that person's tasks (as far as the caller "
                       "may see them)"})
    candidate = fields.String(load_default=None, validate=validate.Equal("me"), metadata={
        "description": "me: unclaimed tasks offered to the caller"})
    status = fields.List(fields.String(validate=validate.OneOf(list(TaskStatus))),
                         load_default=lambda: list(ACTIVE_TASK_STATES))
    overdue = fields.Boolean(load_default=False)
    at_risk = fields.Boolean(load_default=False, metadata={
        "description": "not yet due, but past the point its SLA calls at risk"})
    due_within_hours = fields.Float(load_default=None, validate=validate.Range(min=0, max=MAX_HOURS))
    process = fields.String(load_default=None)
    element = fields.String(load_default=None, validate=validate.Length(min=1, max=255), metadata={
        "description": "one step of the process (its element id, e.g. investigate)"})
    business_key = fields.String(load_default=None)
    client_id = fields.String(load_default=None, validate=validate.Length(min=1, max=64))
    group = fields.String(load_default=None, validate=validate.Length(min=1, max=64), metadata={
        "description": "offered to this candidate group"})
    branch = fields.String(load_default=None, validate=validate.Length(min=1, max=16))
    sort = fields.String(load_default="due", validate=validate.OneOf(["due", "priority", "created"]), metadata={
        "description": "due: nearest deadline first (no due date last); priority: highest first; "
                       "created: newest first"})
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 500))
    offset = fields.Integer(load_default=0, validate=OFFSET)


class BulkClaimIn(Schema):
    task_ids = fields.List(fields.Integer(strict=True, validate=validate.Range(min=1, max=2**63 - 1)),
                           required=True, validate=validate.Length(min=1, max=100), metadata={
                               "description": "1 to 100 task ids; each is claimed in a transaction of its own"})


class OutcomeOut(Schema):
    task_id = fields.Integer()
    done = fields.Boolean()
    status = fields.Integer(metadata={"description": "200, or the status the command on this task alone would answer"})
    code = fields.String(allow_none=True)
    detail = fields.String(allow_none=True)


class ClaimOutcomeOut(OutcomeOut):
    """A bulk claim's result names ``done`` ``claimed``."""

    claimed = fields.Boolean(attribute="done")

    class Meta:
        exclude = ("done",)


class BulkClaimOut(Schema):
    claimed = fields.Integer()
    refused = fields.Integer()
    results = fields.List(fields.Nested(ClaimOutcomeOut))


class BulkRemindIn(BulkClaimIn):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=500), metadata={
        "description": "why: sent with the reminder and kept in the audit trail"})


class BulkReassignIn(BulkRemindIn):
    username = fields.String(required=True, validate=validate.Length(min=1, max=64), metadata={
        "description": "a member of each task's candidate groups (anyone else is refused for that task)"})


class BulkEscalateIn(BulkRemindIn):
    to = fields.String(load_default=None, validate=validate.Length(min=1, max=128), metadata={
        "description": "the group to escalate to (a group key, or branch:<role> for that role at each case's "
                       "branch); omitted: where each step's deadline policy escalates"})


class BulkOut(Schema):
    done = fields.Integer()
    refused = fields.Integer()
    results = fields.List(fields.Nested(OutcomeOut))


class TaskPageOut(Schema):
    items = fields.List(fields.Nested(TaskOut))
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class UserIn(Schema):
    username = fields.String(required=True, validate=validate.Length(min=1, max=64))


class AssignIn(UserIn):
    reason = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=1000), metadata={
        "description": "required to give the task to someone in none of its candidate groups (audited)"})


class CompleteIn(Schema):
    data = fields.Dict(keys=fields.String(), load_default=dict)


_IDEMPOTENCY_KEY = validate.Regexp(r"^[\x21-\x7e]{1,128}$", error="1 to 128 visible ASCII characters, no spaces")
_IDEMPOTENCY_DOC = (
    "the sender's id for this message (e.g. a UUID): a repeat with the same key, message name, correlation "
    "key and payload within BPM_IDEMPOTENCY_HOURS (default 7 days) gets the first answer, with "
    "Idempotent-Replayed: true, and changes nothing; the same key with another correlation key or payload "
    "is 409 idempotency_key_reused. Scoped to the sender and the message name")


class MessageIn(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=128))
    correlation_key = fields.String(load_default=None, validate=validate.Length(min=1, max=128), metadata={
        "description": "the waiting case's business key; omit for a message that starts a numbered case"})
    payload = fields.Dict(keys=fields.String(), load_default=dict)
    message_id = fields.String(load_default=None, validate=_IDEMPOTENCY_KEY, metadata={
        "description": f"idempotency key, as the Idempotency-Key header (either; both must agree): {_IDEMPOTENCY_DOC}"})


class MessageHeaders(Schema):
    idempotency_key = fields.String(data_key="Idempotency-Key", load_default=None, validate=_IDEMPOTENCY_KEY,
                                    metadata={"description": _IDEMPOTENCY_DOC})


class PauseIn(Schema):
    reason = fields.String(load_default="", validate=validate.Length(max=500))


class MilestoneSchema(Schema):
    at = Real(required=True, validate=validate.Range(min=0, min_inclusive=False, max=5))
    action = fields.String(required=True, validate=validate.OneOf(milestones.ACTIONS))
    to = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=160))
    by = fields.Integer(strict=True, load_default=None, allow_none=True, validate=validate.Range(-1000, 1000),
                        metadata={"description": "raise_priority: how much"})


class PolicySchema(Schema):
    key = fields.String(dump_only=True)
    name = fields.String(required=True, validate=validate.Length(min=1, max=256))
    position = fields.Integer(strict=True, load_default=100, validate=INT32)
    active = Flag(load_default=True)
    process_key = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=128))
    element_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=128))
    lane = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=128))
    min_priority = fields.Integer(strict=True, load_default=None, allow_none=True, validate=INT32)
    match_data = fields.Dict(load_default=dict)
    target_amount = DecimalText(required=True)
    target_unit = fields.String(required=True, validate=validate.OneOf([u.value for u in Unit]))
    business_hours = fields.String(load_default="default", validate=validate.Length(min=1, max=64))
    milestones = fields.List(fields.Nested(MilestoneSchema), load_default=list)
    pausable = Flag(load_default=True)
    anchor_variable = fields.String(load_default=None, allow_none=True, validate=[
        validate.Length(max=128), validate.Regexp(r"^[^\W\d]\w*$", error="a variable name")], metadata={
        "description": "variable with the moment the clock counts from (e.g. opened_at), if earlier than the task"})
    updated_at = fields.DateTime(dump_only=True)
    updated_by = fields.String(dump_only=True, allow_none=True)


class PolicySavedOut(Schema):
    policy = fields.Nested(PolicySchema)
    recomputed_tasks = fields.Integer()


class MilestonePointOut(Schema):
    at = fields.Float()
    action = fields.String()
    to = fields.String(allow_none=True)
    due = fields.DateTime(metadata={"description": "when the milestone fires for the sample task"})


class TaskMoveOut(Schema):
    task_id = fields.Integer()
    business_key = fields.String(allow_none=True)
    process_key = fields.String()
    element_id = fields.String()
    before = fields.DateTime(allow_none=True, metadata={"description": "the due date now"})
    after = fields.DateTime(allow_none=True, metadata={"description": "the due date a save would give"})
    shift_seconds = fields.Float(allow_none=True)


class PolicyPreviewOut(Schema):
    start = fields.DateTime(metadata={"description": "the sample task's creation: now"})
    due = fields.DateTime(metadata={"description": "the sample task's due date"})
    incomplete = fields.Boolean(metadata={"description": "the sample's due date needs days the calendar lacks"})
    at_risk = fields.DateTime()
    milestones = fields.List(fields.Nested(MilestonePointOut))
    open_tasks = fields.Integer(metadata={"description": "open tasks a save recomputes"})
    changed_tasks = fields.Integer(metadata={"description": "of them, those whose policy or due date would change"})
    gained = fields.Integer(metadata={"description": "tasks that would get a due date"})
    lost = fields.Integer(metadata={"description": "tasks that would lose theirs"})
    shift_min_seconds = fields.Float(allow_none=True)
    shift_median_seconds = fields.Float(allow_none=True)
    shift_max_seconds = fields.Float(allow_none=True)
    changes = fields.List(fields.Nested(TaskMoveOut), metadata={"description": "the first 100 changed tasks"})


class CalendarQuery(Schema):
    start = Day(required=True, data_key="from")
    end = Day(required=True, data_key="to")


class CalendarDayOut(Schema):
    day = fields.Date()
    working = fields.Boolean()
    trading = fields.Boolean()
    name = fields.String(allow_none=True)
    source = fields.String()
    updated_by = fields.String(allow_none=True)


class CalendarDayIn(Schema):
    working = Flag(required=True)
    trading = Flag(load_default=None, allow_none=True,
                             metadata={"description": "default: working and Monday-Friday"})
    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))


class CoverageOut(Schema):
    first = fields.Date(allow_none=True)
    last = fields.Date(allow_none=True, metadata={"description": "the last day of the unbroken run of known days"})
    incomplete_open_tasks = fields.Integer()
    complete_years = fields.List(fields.Integer(), metadata={"description": "years imported whole from their notice"})
    warning = fields.String(allow_none=True, metadata={
        "description": "from 1 November while next year is not known, or when the known days have a gap"})
    recomputed_tasks = fields.Integer(load_default=None)
    moved_schedules = fields.Integer(load_default=None)


class YearDayIn(Schema):
    date = Day(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(["holiday", "workday"]), metadata={
        "description": "holiday: no work, no trading; workday: a make-up working day (调休) on a weekend"})
    name = fields.String(required=True, validate=validate.Length(min=1, max=64), metadata={
        "description": "e.g. 春节 or 春节调休"})


class YearIn(Schema):
    days = fields.List(fields.Nested(YearDayIn), required=True, validate=validate.Length(max=366))
    complete = fields.Boolean(load_default=True, metadata={
        "description": "this is the year's official notice (the coverage stops warning about the year)"})


class YearOut(CoverageOut):
    year = fields.Integer()
    holidays = fields.Integer()
    workdays = fields.Integer()


class TimerOut(Schema):
    id = fields.Integer()
    kind = fields.String()
    instance_id = fields.Integer(allow_none=True)
    element_id = fields.String()
    due_at = fields.DateTime()
    status = fields.String()
    fired_at = fields.DateTime(allow_none=True)
    attempts = fields.Integer()
    last_error = fields.String(allow_none=True)


class TimerQuery(Schema):
    status = fields.String(load_default=TimerStatus.WAITING.value,
                           validate=validate.OneOf(list(TimerStatus)),
                           metadata={"description": "failed: timers given up after repeated errors"})


class RescheduleIn(Schema):
    due_at = Moment(required=True)


class ScheduleIn(Schema):
    key = fields.String(required=True, validate=validate.Length(min=1, max=128))
    process_key = fields.String(required=True, validate=validate.Length(min=1, max=128))
    rule = fields.String(required=True, validate=validate.Length(min=1, max=64))
    at_time = fields.String(required=True, validate=validate.Regexp(r"^\d{2}:\d{2}$"))
    business_hours = fields.String(load_default="default", validate=validate.Length(min=1, max=64))
    catch_up = fields.String(load_default="once", validate=validate.OneOf(["once", "all"]))
    data = fields.Dict(load_default=dict)


class ScheduleOut(Schema):
    id = fields.Integer()
    key = fields.String()
    process_key = fields.String()
    rule = fields.String()
    at_time = fields.String()
    catch_up = fields.String()
    active = fields.Boolean()
    next_run_at = fields.DateTime(allow_none=True)
    last_run_at = fields.DateTime(allow_none=True)


class BusinessHoursSchema(Schema):
    name = fields.String(dump_only=True)
    tz = fields.String(load_default="Asia/Shanghai", validate=validate.Length(min=1, max=64))
    periods = fields.List(fields.List(fields.String(validate=validate.Regexp(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")),
                                      validate=validate.Length(equal=2)),
                          required=True, validate=validate.Length(min=1),
                          metadata={"example": [["09:00", "11:30"], ["13:00", "17:00"]]})


# -- client registry and classification -----------------------------------------------------
class BranchOut(Schema):
    code = fields.String()
    name = fields.String()
    city = fields.String()


class ClientOut(Schema):
    """Identifiers always arrive masked (docs/domain.md#masking); the full value only through
    ``POST /clients/<id>/reveal``. ``assets``/``turnover`` are null for callers who may not
    see them (counter staff, call centre)."""

    client_id = fields.String()
    name = fields.String()
    branch_code = fields.String()
    service_group = fields.String(allow_none=True, metadata={"description": "null: the branch pool"})
    age = fields.Integer(allow_none=True)
    id_number_masked = fields.String(allow_none=True, metadata={"example": "3301**********2315"})
    phone_masked = fields.String(allow_none=True, metadata={"example": "139****0421"})
    account_number_masked = fields.String(allow_none=True, metadata={"example": "**** 5521"})
    assets = fields.Decimal(as_string=True, allow_none=True)
    turnover = fields.Decimal(as_string=True, allow_none=True)
    risk_level = fields.String(allow_none=True)
    c1_lowest = fields.Boolean()
    operating_habit = fields.String(allow_none=True)
    classification = fields.String(allow_none=True)
    class_rules = fields.String(allow_none=True, metadata={"description": "the rule version that classified it"})
    classified_on = fields.Date(allow_none=True)
    vip_tier = fields.String(allow_none=True)
    tier_since = fields.Date(allow_none=True)
    downgrade_grace_until = fields.Date(allow_none=True)
    updated_at = fields.DateTime()


class ClientPageOut(Schema):
    items = fields.List(fields.Nested(ClientOut))
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class ClientQuery(Schema):
    branch = fields.String(load_default=None)
    service_group = fields.String(load_default=None)
    classification = fields.String(load_default=None)
    vip_tier = fields.String(load_default=None)
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 500))
    offset = fields.Integer(load_default=0, validate=OFFSET)


class RevealIn(Schema):
    field = fields.String(required=True, validate=validate.OneOf(list(client_access.REVEAL_ROLES)))
    reason = fields.String(required=True, validate=validate.OneOf(client_access.REVEAL_REASONS))
    note = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=500))


class RevealOut(Schema):
    client_id = fields.String()
    field = fields.String()
    value = fields.String(allow_none=True)
    revealed_at = fields.DateTime()
    remask_after_seconds = fields.Integer()


class MemberOut(Schema):
    username = fields.String()
    display_name = fields.String()
    job_roles = fields.List(fields.String())
    back_office = fields.Boolean()
    lead = fields.Boolean()


class ServiceGroupOut(Schema):
    key = fields.String()
    name = fields.String()
    branch_code = fields.String()
    members = fields.List(fields.Nested(MemberOut))
    client_count = fields.Integer()


class GroupQuery(Schema):
    branch = fields.String(load_default=None)


class DepartureIn(Schema):
    departed_on = Day(required=True, metadata={"description": "the last day (today or earlier)"})


class GroupShortfallOut(Schema):
    key = fields.String()
    members = fields.List(fields.String())
    problems = fields.List(fields.String(), metadata={
        "description": "size: fewer than 2 members left; back_office: no middle/back-office member left"})
    message = fields.String()


class DepartureOut(Schema):
    username = fields.String()
    departed_on = fields.Date()
    service_group = fields.String(allow_none=True)
    callbacks = fields.List(fields.Nested(InstanceOut), metadata={
        "description": "one departed_staff callback per client of the person's service group"})
    released_tasks = fields.Integer(metadata={"description": "tasks the person had claimed, back in their queues"})
    groups_needing_replacement = fields.List(fields.Nested(GroupShortfallOut))
    handed_over = fields.Dict(keys=fields.String(), values=fields.String(allow_none=True), metadata={
        "description": "the running complaints whose first-contact owner (首办责任人) the person was, by case "
                       "number: who owns the client contact now (the branch's 客服总监, or the call centre's "
                       "supervisor); null when nobody could take it over"})


class RowErrorOut(Schema):
    line = fields.Integer()
    column = fields.String(allow_none=True)
    reason = fields.String()


class FileReportOut(Schema):
    kind = fields.String()
    source = fields.String()
    created = fields.Integer()
    updated = fields.Integer()
    unchanged = fields.Integer()
    rejected = fields.List(fields.Nested(RowErrorOut))


class ImportReportOut(Schema):
    ok = fields.Boolean(metadata={"description": "no row was rejected"})
    rejected = fields.Integer()
    files = fields.List(fields.Nested(FileReportOut))


class BandSchema(Schema):
    min_assets = DecimalText(required=True)
    active = fields.String(required=True, validate=validate.OneOf(classification.CLASSES))
    inactive = fields.String(required=True, validate=validate.OneOf(classification.CLASSES))


class VipThresholdsSchema(Schema):
    silver = DecimalText(required=True)
    gold = DecimalText(required=True)
    diamond = DecimalText(required=True)


class RuleSetIn(Schema):
    """A new version; values left out are copied from the scope's latest version."""

    scope = fields.String(load_default=classification.COMPANY, validate=validate.Length(min=1, max=32))
    effective_from = Day(required=True)
    approved_by = fields.String(required=True, validate=validate.Length(min=1, max=64))
    note = fields.String(load_default=None, allow_none=True)
    turnover_threshold = DecimalText(load_default=None, allow_none=True)
    bands = fields.List(fields.Nested(BandSchema), load_default=None, allow_none=True, validate=validate.Length(min=1))
    vip_thresholds = fields.Nested(VipThresholdsSchema, load_default=None, allow_none=True)
    downgrade_grace_months = fields.Integer(strict=True, load_default=None, allow_none=True,
                                            validate=validate.Range(0, 24))


class RuleSetOut(Schema):
    id = fields.Integer()
    scope = fields.String()
    version = fields.Integer()
    effective_from = fields.Date()
    effective_to = fields.Date(allow_none=True)
    turnover_threshold = fields.Decimal(as_string=True)
    bands = fields.List(fields.Dict())
    vip_thresholds = fields.Dict()
    downgrade_grace_months = fields.Integer()
    approved_by = fields.String()
    note = fields.String(allow_none=True)
    created_by = fields.String(allow_none=True)
    created_at = fields.DateTime()


# -- supervisors' figures (docs/figures.md) -------------------------------------------------
class FigureQuery(Schema):
    first = Day(data_key="from", load_default=None,
                        metadata={"description": "first day (Asia/Shanghai), inclusive; default 1 January"})
    last = Day(data_key="to", load_default=None,
                       metadata={"description": "last day (Asia/Shanghai), inclusive; default today"})
    branch = fields.String(load_default=None, metadata={"description": "branch code; branch staff: their own"})
    group = fields.String(load_default=None, metadata={"description": "service group (candidate group for tasks)"})


class OverdueQuery(FigureQuery):
    by = fields.List(fields.String(validate=validate.OneOf(["branch", "group", "process", "step", "assignee"])),
                     load_default=lambda: ["branch"],
                     metadata={"description": "repeat to combine, e.g. by=process&by=step"})
    buckets = fields.List(fields.Integer(validate=validate.Range(min=0, min_inclusive=False, max=MAX_SCAN_DAYS)),
                          load_default=None,
                          metadata={"description": "the last whole working day overdue of each ageing bucket but "
                                                   "the open-ended last, e.g. buckets=2&buckets=5&buckets=10 for "
                                                   "0-2, 3-5, 6-10 and >10 WD"})


class SatisfactionQuery(FigureQuery):
    by = fields.String(load_default="branch", validate=validate.OneOf(["branch", "group"]))


class BucketOut(Schema):
    from_days = fields.Integer(metadata={"description": "first whole working day overdue in the bucket"})
    to_days = fields.Integer(allow_none=True, metadata={
        "description": "last whole working day overdue in the bucket (included); null: no upper end"})
    count = fields.Integer()


class TaskFigureRowOut(Schema):
    key = fields.Dict(keys=fields.String(), values=fields.String(allow_none=True))
    names = fields.Dict(keys=fields.String(), values=fields.String(allow_none=True), metadata={
        "description": "what people call each key: the branch's, group's and person's names, the process's and "
                       "the step's (Chinese) name"})
    overdue = fields.Integer()
    at_risk = fields.Integer()
    closed_late = fields.Integer()
    regulatory_overdue = fields.Integer()
    ageing = fields.List(fields.Nested(BucketOut))


class TaskFiguresOut(Schema):
    as_of = fields.DateTime()
    by = fields.List(fields.String())
    total = fields.Nested(TaskFigureRowOut)
    rows = fields.List(fields.Nested(TaskFigureRowOut))


class SeverityFiguresOut(Schema):
    severity = fields.String()
    responded = fields.Integer()
    on_time = fields.Integer()
    on_time_rate = fields.Float(allow_none=True)
    median_days = fields.Float(allow_none=True)
    p90_days = fields.Float(allow_none=True)
    max_days = fields.Float(allow_none=True)
    median_working_days = fields.Float(allow_none=True)
    p90_working_days = fields.Float(allow_none=True)
    unresolved_overdue = fields.Integer()


class RegulatorFeedbackOut(Schema):
    due = fields.Integer()
    on_time = fields.Integer()
    late = fields.Integer()
    pending = fields.Integer()
    on_time_rate = fields.Float(allow_none=True)


class ComplaintFiguresOut(Schema):
    as_of = fields.DateTime()
    by_severity = fields.List(fields.Nested(SeverityFiguresOut))
    total = fields.Nested(SeverityFiguresOut)
    regulator_feedback = fields.Nested(RegulatorFeedbackOut)


class RetentionFiguresOut(Schema):
    as_of = fields.DateTime()
    requests = fields.Integer()
    open_to_talk = fields.Integer()
    conversations_held = fields.Integer()
    retained = fields.Integer()
    attempt_rate = fields.Float(allow_none=True)
    success_rate = fields.Float(allow_none=True)
    obstruction_complaints = fields.Integer()
    post_closure_obstructed = fields.Integer()
    late_executions = fields.Integer()
    guard_total = fields.Integer()


class NewAccountCallbacksOut(Schema):
    as_of = fields.DateTime()
    opened = fields.Integer()
    completed_on_time = fields.Integer()
    completed_late = fields.Integer()
    overdue = fields.Integer()
    pending = fields.Integer()
    completion_rate = fields.Float(allow_none=True)
    target = fields.Float()


class PeriodicCallbacksOut(Schema):
    year = fields.Integer()
    base_year_end = fields.Integer()
    active_clients = fields.Integer(allow_none=True)
    min_ratio = fields.Decimal(as_string=True)
    quota = fields.Integer(allow_none=True)
    clients_called = fields.Integer()
    coverage = fields.Float(allow_none=True)


class SatisfactionOut(Schema):
    responses = fields.Integer()
    mean = fields.Float(allow_none=True)
    satisfied_share = fields.Float(allow_none=True)


class SatisfactionRowOut(Schema):
    key = fields.String(allow_none=True)
    complaint = fields.Nested(SatisfactionOut)
    callback = fields.Nested(SatisfactionOut)
    overall = fields.Nested(SatisfactionOut)


class GroupScoreOut(Schema):
    group = fields.String()
    branch = fields.String()
    clients = fields.Integer()
    assets_start = fields.Decimal(as_string=True)
    assets_end = fields.Decimal(as_string=True)
    growth = fields.Decimal(as_string=True)
    new_money = fields.Decimal(as_string=True)
    appreciation = fields.Decimal(as_string=True)
    growth_rate = fields.Float(allow_none=True)
    traded_amount = fields.Decimal(as_string=True)
    avg_assets = fields.Decimal(as_string=True)
    turnover = fields.Float(allow_none=True)
    referrals = fields.Integer()
    referral_rate = fields.Float(allow_none=True)
    score = fields.Float()
    rank = fields.Integer()
    highlight = fields.String(allow_none=True)


class PeriodAssessmentOut(Schema):
    period_start = fields.Date()
    period_end = fields.Date()
    groups = fields.List(fields.Nested(GroupScoreOut))


class NotificationQuery(Schema):
    status = fields.String(load_default="all", validate=validate.OneOf(["all", "unread", "read"]))
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 500))
    offset = fields.Integer(load_default=0, validate=OFFSET)


class NotificationOut(Schema):
    id = fields.Integer()
    subject = fields.String(metadata={"description": "in the recipient's language, times in Beijing time"})
    body = fields.String()
    instance_id = fields.Integer(allow_none=True)
    task_id = fields.Integer(allow_none=True)
    created_at = fields.DateTime()
    read_at = fields.DateTime(allow_none=True)


class NotificationPageOut(Schema):
    items = fields.List(fields.Nested(NotificationOut))
    total = fields.Integer()
    unread = fields.Integer(metadata={"description": "how many of the caller's notifications are unread"})
    limit = fields.Integer()
    offset = fields.Integer()
