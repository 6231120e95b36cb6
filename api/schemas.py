"""marshmallow schemas: what the API accepts and returns (and what OpenAPI documents)."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, validate

from api.context import bpm
from engine import sla
from engine.calendars import Unit
from engine.runtime import ACTIVE_TASK_STATES

TASK_STATUSES = ("open", "claimed", "completed", "cancelled")
INSTANCE_STATUSES = ("running", "completed", "cancelled", "failed")


class LoginIn(Schema):
    username = fields.String(required=True)
    password = fields.String(required=True, load_only=True)


class TokenOut(Schema):
    token = fields.String()
    username = fields.String()


class MeOut(Schema):
    username = fields.String()
    groups = fields.List(fields.String())
    branch_code = fields.String(allow_none=True)


class VersionOut(Schema):
    id = fields.Integer()
    process_key = fields.String()
    version = fields.Integer()
    name = fields.String(allow_none=True)
    sha256 = fields.String()
    source_file = fields.String()
    deployment_id = fields.Integer()
    start_messages = fields.List(fields.String())
    created_at = fields.DateTime()


class DeployedOut(VersionOut):
    created = fields.Boolean()


class DeployOut(Schema):
    versions = fields.List(fields.Nested(DeployedOut))


class ProblemOut(Schema):
    file = fields.String()
    line = fields.Integer(allow_none=True)
    element_id = fields.String(allow_none=True)
    message = fields.String()


class CheckOut(Schema):
    ok = fields.Boolean()
    problems = fields.List(fields.Nested(ProblemOut))


class DeployQuery(Schema):
    check = fields.Boolean(load_default=False, metadata={"description": "validate only, store nothing"})


class StartIn(Schema):
    business_key = fields.String(required=True, validate=validate.Length(min=1, max=128))
    data = fields.Dict(keys=fields.String(), load_default=dict)
    client_id = fields.String(load_default=None, allow_none=True)
    branch_code = fields.String(load_default=None, allow_none=True)


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


class InstanceDetailOut(InstanceOut):
    data = fields.Dict()


class InstanceQuery(Schema):
    process = fields.String(load_default=None)
    status = fields.String(load_default=None, validate=validate.OneOf(INSTANCE_STATUSES))
    business_key = fields.String(load_default=None)
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 500))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))


class CancelIn(Schema):
    reason = fields.String(load_default="", validate=validate.Length(max=1000))


class HistoryOut(Schema):
    seq = fields.Integer()
    kind = fields.String()
    actor = fields.String(allow_none=True)
    occurred_at = fields.DateTime()
    task_uuid = fields.String(allow_none=True)
    data = fields.Dict()


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
    sla_state = fields.Method("_sla_state", metadata={"description": "on_track, at_risk, breached, paused or none"})
    seconds_to_breach = fields.Method("_seconds_to_breach", allow_none=True)

    def _sla_state(self, task: Any) -> str:
        return sla.state(task, bpm().runtime.now())[0]

    def _seconds_to_breach(self, task: Any) -> float | None:
        return sla.state(task, bpm().runtime.now())[1]


class TaskDetailOut(TaskOut):
    form = fields.Dict(allow_none=True, metadata={"description": "the task's JSON Schema form"})


class TaskQuery(Schema):
    assignee = fields.String(load_default=None, validate=validate.Equal("me"))
    candidate = fields.String(load_default=None, validate=validate.Equal("me"))
    status = fields.List(fields.String(validate=validate.OneOf(TASK_STATUSES)),
                         load_default=lambda: list(ACTIVE_TASK_STATES))
    overdue = fields.Boolean(load_default=False)
    due_within_hours = fields.Float(load_default=None, validate=validate.Range(min=0))
    process = fields.String(load_default=None)
    business_key = fields.String(load_default=None)
    sort = fields.String(load_default="due", validate=validate.Equal("due"))
    limit = fields.Integer(load_default=50, validate=validate.Range(1, 500))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0))


class TaskPageOut(Schema):
    items = fields.List(fields.Nested(TaskOut))
    total = fields.Integer()
    limit = fields.Integer()
    offset = fields.Integer()


class UserIn(Schema):
    username = fields.String(required=True)


class CompleteIn(Schema):
    data = fields.Dict(keys=fields.String(), load_default=dict)


class MessageIn(Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=128))
    correlation_key = fields.String(required=True, validate=validate.Length(min=1, max=128))
    payload = fields.Dict(keys=fields.String(), load_default=dict)


class PauseIn(Schema):
    reason = fields.String(load_default="", validate=validate.Length(max=500))


class MilestoneSchema(Schema):
    at = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False, max=5))
    action = fields.String(required=True, validate=validate.OneOf(sla.ACTIONS))
    to = fields.String(load_default=None, allow_none=True)
    by = fields.Integer(load_default=None, allow_none=True)


class PolicySchema(Schema):
    key = fields.String(dump_only=True)
    name = fields.String(required=True)
    position = fields.Integer(load_default=100)
    active = fields.Boolean(load_default=True)
    process_key = fields.String(load_default=None, allow_none=True)
    element_id = fields.String(load_default=None, allow_none=True)
    lane = fields.String(load_default=None, allow_none=True)
    min_priority = fields.Integer(load_default=None, allow_none=True)
    match_data = fields.Dict(load_default=dict)
    target_amount = fields.Decimal(required=True, as_string=True)
    target_unit = fields.String(required=True, validate=validate.OneOf([u.value for u in Unit]))
    business_hours = fields.String(load_default="default")
    milestones = fields.List(fields.Nested(MilestoneSchema), load_default=list)
    pausable = fields.Boolean(load_default=True)
    updated_at = fields.DateTime(dump_only=True)
    updated_by = fields.String(dump_only=True, allow_none=True)


class PolicySavedOut(Schema):
    policy = fields.Nested(PolicySchema)
    recomputed_tasks = fields.Integer()


class CalendarQuery(Schema):
    start = fields.Date(required=True, data_key="from")
    end = fields.Date(required=True, data_key="to")


class CalendarDayOut(Schema):
    day = fields.Date()
    working = fields.Boolean()
    trading = fields.Boolean()
    name = fields.String(allow_none=True)
    source = fields.String()
    updated_by = fields.String(allow_none=True)


class CalendarDayIn(Schema):
    working = fields.Boolean(required=True)
    trading = fields.Boolean(load_default=None, allow_none=True,
                             metadata={"description": "default: working and Monday-Friday"})
    name = fields.String(load_default=None, allow_none=True)


class CoverageOut(Schema):
    first = fields.Date(allow_none=True)
    last = fields.Date(allow_none=True)
    incomplete_open_tasks = fields.Integer()
    recomputed_tasks = fields.Integer(load_default=None)


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
    status = fields.String(load_default="waiting",
                           validate=validate.OneOf(["waiting", "paused", "fired", "cancelled", "failed"]),
                           metadata={"description": "failed: timers given up after repeated errors"})


class RescheduleIn(Schema):
    due_at = fields.AwareDateTime(required=True)


class ScheduleIn(Schema):
    key = fields.String(required=True)
    process_key = fields.String(required=True)
    rule = fields.String(required=True)
    at_time = fields.String(required=True, validate=validate.Regexp(r"^\d{2}:\d{2}$"))
    business_hours = fields.String(load_default="default")
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
    tz = fields.String(load_default="Asia/Shanghai")
    periods = fields.List(fields.List(fields.String(), validate=validate.Length(equal=2)), required=True,
                          metadata={"example": [["09:00", "11:30"], ["13:00", "17:00"]]})
