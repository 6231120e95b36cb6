"""What the OpenAPI document says beyond what flask-smorest derives from the schemas: the
text every string may hold, decimals as the strings they are served as, and the error
answers each operation can give, so a client (and a contract test) can rely on it.

Every operation is listed in :data:`ERRORS` with the refusals its service raises; the
answers every request can get are added to all of them (:data:`EVERY_REQUEST`). A test
(tests/api/test_openapi_document.py) fails when an endpoint is missing from the table.
"""

from __future__ import annotations

import http
from typing import Any

from apispec import BasePlugin
from flask_smorest.spec.plugins import unicodeconverter2paramschema
from marshmallow import fields, validate
from werkzeug.routing import UnicodeConverter

from api.guard import DayConverter
from api.schemas import Day, DecimalText, Moment

# Every string the API takes or gives is text a database can store: no U+0000 (the guard,
# api/guard.py, refuses it anywhere in a request). Enumerations, dates and patterns say more.
TEXT_PATTERN = r"^[^\x00]*$"
DECIMAL_PATTERN = DecimalText.PATTERN

# Answers any request can get: its text cannot be stored or its body read (422, 400).
EVERY_REQUEST = (400, 422)
# And every request but these, which need no token: no valid token (401).
PUBLIC = frozenset({("post", "/api/v1/auth/login")})
# What a request body adds: more than the server reads at once (413).
WITH_BODY = (413,)

# The refusals of each operation's service, beyond the above: 403 the caller's roles do
# not allow it, 404 no such thing (or one the caller may not see), 409 the state does not
# allow it, 503 concurrent_change (PostgreSQL rolled a writing transaction back on a
# deadlock, a serialization failure or a lock not available; send it again).
_WRITE = (403, 404, 409, 503)
ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/api/v1/auth/login"): (401,),
    ("post", "/api/v1/auth/logout"): (503,),
    ("post", "/api/v1/auth/revoke"): (403, 503),
    ("post", "/api/v1/auth/unlock"): (403, 503),
    ("get", "/api/v1/auth/me"): (),
    ("post", "/api/v1/deployments"): (403, 503),
    ("get", "/api/v1/processes"): (),
    ("get", "/api/v1/processes/{process_key}/versions"): (404,),
    ("get", "/api/v1/processes/{process_key}/versions/{version}/bpmn"): (404,),
    ("post", "/api/v1/processes/{process_key}/versions/{version}/redeploy"): _WRITE,
    ("get", "/api/v1/processes/{process_key}/diff"): (403, 404),
    ("post", "/api/v1/processes/{process_key}/diff"): (403, 404),
    ("post", "/api/v1/processes/{process_key}/migrations"): (403, 404, 503),
    ("post", "/api/v1/processes/{process_key}/instances"): _WRITE,
    ("get", "/api/v1/instances"): (),
    ("get", "/api/v1/instances/{instance_id}"): (404,),
    ("get", "/api/v1/instances/{instance_id}/history"): (404,),
    ("get", "/api/v1/instances/{instance_id}/activity"): (404,),
    ("get", "/api/v1/instances/{instance_id}/comments"): (404,),
    ("post", "/api/v1/instances/{instance_id}/comments"): (404, 503),
    ("post", "/api/v1/instances/{instance_id}/cancel"): _WRITE,
    ("post", "/api/v1/instances/{instance_id}/retry"): _WRITE,
    ("patch", "/api/v1/instances/{instance_id}/data"): _WRITE,
    ("post", "/api/v1/instances/{instance_id}/owner"): _WRITE,
    ("get", "/api/v1/tasks"): (),
    ("get", "/api/v1/tasks/{task_id}"): (404,),
    ("post", "/api/v1/tasks/claim"): (),
    ("post", "/api/v1/tasks/remind"): (),
    ("post", "/api/v1/tasks/reassign"): (),
    ("post", "/api/v1/tasks/escalate"): (),
    **{("post", f"/api/v1/tasks/{{task_id}}/{command}"): _WRITE
       for command in ("claim", "unclaim", "assign", "delegate", "complete", "pause", "resume")},
    ("post", "/api/v1/messages"): _WRITE,
    ("get", "/api/v1/sla/policies"): (),
    ("put", "/api/v1/sla/policies/{key}"): (403, 404, 503),
    ("post", "/api/v1/sla/policies/{key}/preview"): (403, 404),
    ("get", "/api/v1/calendar/days"): (),
    ("put", "/api/v1/calendar/days/{day}"): (403, 503),
    ("put", "/api/v1/calendar/years/{year}"): (403, 503),
    ("get", "/api/v1/calendar/hours"): (),
    ("put", "/api/v1/calendar/hours/{name}"): (403, 404, 503),
    ("get", "/api/v1/calendar/coverage"): (),
    ("get", "/api/v1/timers"): (403,),
    ("post", "/api/v1/timers/{timer_id}/reschedule"): _WRITE,
    ("get", "/api/v1/schedules"): (),
    ("post", "/api/v1/schedules"): _WRITE,
    ("get", "/api/v1/branches"): (),
    ("get", "/api/v1/clients"): (403,),
    ("get", "/api/v1/clients/{client_id}"): (404,),
    ("post", "/api/v1/clients/{client_id}/reveal"): (403, 404, 503),
    ("get", "/api/v1/service-groups"): (403,),
    ("get", "/api/v1/service-groups/{key}"): (404,),
    ("post", "/api/v1/staff/{username}/departure"): _WRITE,
    ("post", "/api/v1/registry/import"): (403, 503),
    ("get", "/api/v1/classification/rule-sets"): (),
    ("post", "/api/v1/classification/rule-sets"): (403, 409, 503),
    **{("get", f"/api/v1/figures/{name}"): (403, 404) for name in (
        "overdue-tasks", "complaints", "retention", "callbacks/new-accounts", "callbacks/periodic", "satisfaction",
        "group-assessment")},
    ("get", "/api/v1/notifications"): (),
    ("post", "/api/v1/notifications/{notification_id}/read"): (404, 503),
}

CONCURRENT_CHANGE = "CONCURRENT_CHANGE"


class ErrorAnswers(BasePlugin):  # type: ignore[misc]
    """An apispec plugin: adds each operation's error answers as it is registered."""

    def init_spec(self, spec: Any) -> None:
        super().init_spec(spec)
        self.spec = spec

    def operation_helper(self, path: str | None = None, operations: dict[str, Any] | None = None,
                         **kwargs: Any) -> None:
        for method, operation in (operations or {}).items():
            statuses = set(EVERY_REQUEST) | set(ERRORS.get((method, path or ""), ()))
            if (method, path) not in PUBLIC:
                statuses.add(401)
            if "requestBody" in operation or method in ("post", "put", "patch"):
                statuses.update(WITH_BODY)
            responses = operation.setdefault("responses", {})
            for status in sorted(statuses):
                name = CONCURRENT_CHANGE if status == 503 else http.HTTPStatus(status).name
                responses.setdefault(str(status), name)
            self._body_required_only_if_a_field_is(operation.get("requestBody"))

    def _body_required_only_if_a_field_is(self, body: dict[str, Any] | None) -> None:
        """A JSON body whose every member is optional may be left out (it reads as ``{}``);
        flask-smorest marks every body required."""
        if not body or "application/json" not in body.get("content", {}):
            return
        ref = body["content"]["application/json"].get("schema", {}).get("$ref", "")
        schema = self.spec.components.schemas.get(ref.rsplit("/", 1)[-1], {})
        body["required"] = bool(schema.get("required"))


def install(api: Any) -> None:
    """Register the field and converter documentation on a flask-smorest ``Api``, before any
    blueprint is (the plugin itself goes in through ``spec_kwargs["extra_plugins"]``)."""
    api.ma_plugin.converter.add_attribute_function(_text_and_decimals)
    api.register_field(DecimalText, None, None)
    api.register_field(fields.Decimal, "string", "decimal")
    api.register_converter(UnicodeConverter, _text_path_parameter)
    api.register_converter(DayConverter, lambda converter: {"type": "string", "format": "date", "pattern": Day.PATTERN})


def _text_and_decimals(self: Any, field: fields.Field, ret: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """What apispec leaves out or says too loosely (it runs after apispec's own functions)."""
    extra: dict[str, Any] = {}
    for validator in field.validators:
        # An exclusive bound (OpenAPI 3.0's boolean form): apispec writes only the bound.
        if isinstance(validator, validate.Range):
            if validator.min is not None and not validator.min_inclusive:
                extra["exclusiveMinimum"] = True
            if validator.max is not None and not validator.max_inclusive:
                extra["exclusiveMaximum"] = True
    if isinstance(field, fields.Nested) and "anyOf" in ret and len(ret["anyOf"]) == 2:
        # A nullable nested object: apispec writes anyOf [the object, {"type": "object"}],
        # which any object matches; OpenAPI 3.0 says it as allOf [the object] + nullable.
        ref, _ = ret.pop("anyOf")
        extra.update({"allOf": [ref], "nullable": True})
    return {**extra, **_formats(field, ret)}


def _formats(field: fields.Field, ret: dict[str, Any]) -> dict[str, Any]:
    if isinstance(field, DecimalText):
        return {"anyOf": [{"type": "string", "pattern": DECIMAL_PATTERN}, {"type": "number"}],
                "description": field.metadata.get("description", "a decimal, sent as a string (or a number) "
                                                                 "and served as a string")}
    if isinstance(field, (Day, Moment)):
        return {"pattern": field.PATTERN}
    if isinstance(field, fields.String) and not ({"enum", "pattern", "format"} & set(ret)):
        return {"pattern": TEXT_PATTERN}
    return {}


def _text_path_parameter(converter: UnicodeConverter) -> dict[str, Any]:
    """``<string:…>``: its lengths as flask-smorest documents them, and text."""
    schema: dict[str, Any] = unicodeconverter2paramschema(converter)
    schema["pattern"] = TEXT_PATTERN
    return schema
