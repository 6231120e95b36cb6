"""The one place where engine errors become HTTP: ``application/problem+json`` (RFC 9457)
with a stable ``code`` taken from the exception class.

Every 422 carries ``errors``: a flat list of ``{"field": ..., "message": ...}``, whichever
check refused the request (the request schema, a form's JSON Schema, the variables of a data
correction, a deployment's lint). ``field`` is the path of the offending value with segments
joined by ``/``, the form errors' convention: ``milestones/0/action``, ``limit``, ``""`` for
the input as a whole. A deployment's entries also keep ``file``, ``line`` and ``element_id``.
"""

from __future__ import annotations

import http
from typing import Any

from flask import Flask, Response, current_app, json
from flask_smorest import Api
from flask_smorest.utils import prepare_response
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from api.schemas import ProblemDetailsOut
from engine import errors
from engine.access.masking import mask_identifiers

PROBLEM = "application/problem+json"

# Most specific first: the first matching class decides the status.
STATUS: list[tuple[type[errors.BpmError], int]] = [
    (errors.AuthenticationFailed, 401),
    (errors.SignInThrottled, 429),
    (errors.PermissionDenied, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.DataTooLarge, 413),
    (errors.FormValidationError, 422),
    (errors.DataInvalid, 422),
    (errors.DeploymentRejected, 422),
    (errors.InvalidInput, 400),
    (errors.ConfigError, 500),
]


def status_for(exc: errors.BpmError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def problem(status: int, code: str, title: str, detail: str | None = None, *,
            headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body = {"type": "about:blank", "status": status, "code": code, "title": title}
    if detail:
        body["detail"] = detail
    body.update(extra)
    if status == 422 and not body.get("errors"):
        # The contract is "every 422 lists what was wrong": a refusal that names no field
        # still gives a client one entry to show.
        body["errors"] = [{"field": "", "message": detail or title}]
    headers = {**({"WWW-Authenticate": "Bearer"} if status == 401 else {}), **(headers or {})}
    # A refusal may quote what it refused (a form value, a correlation key, an unknown member's
    # name): identifiers in it are masked like everywhere else (docs/domain.md#masking).
    body = mask_identifiers(body)
    return Response(json.dumps(body, ensure_ascii=False), status=status, mimetype=PROBLEM,
                    headers=headers)


def field_errors(messages: Any, path: tuple[str, ...] = ()) -> list[dict[str, str]]:
    """marshmallow's nested messages (``{"milestones": {0: {"action": ["…"]}}}``) as the flat
    list; ``_schema`` (a check of the object as a whole) adds no path segment."""
    if isinstance(messages, dict):
        return [entry for key, value in messages.items()
                for entry in field_errors(value, path if key == "_schema" else (*path, str(key)))]
    if isinstance(messages, (list, tuple)):
        return [entry for value in messages for entry in field_errors(value, path)]
    return [{"field": "/".join(path), "message": str(messages)}]


def _deployment_errors(exc: errors.DeploymentRejected) -> list[dict[str, Any]]:
    """A lint problem's field is the bundle file it is in; line and element locate it there."""
    return [{"field": p.file, "message": p.message, "file": p.file, "line": p.line, "element_id": p.element_id}
            for p in exc.problems]


def _handle_engine_error(exc: errors.BpmError) -> Response:
    status = status_for(exc)
    details = dict(exc.details)
    headers: dict[str, str] = {}
    if isinstance(exc, errors.DeploymentRejected):
        details.pop("problems", None)
        details["errors"] = _deployment_errors(exc)
    if isinstance(exc, errors.SignInThrottled):
        headers["Retry-After"] = str(exc.retry_after)
    return problem(status, exc.code, exc.code.replace("_", " "), exc.message, headers=headers, **details)


# PostgreSQL rolled the transaction back because of another one (deadlock detected,
# serialization failure, lock not available): the request itself was fine, nothing of it was
# saved, and sent again it can go through. Two changes that lock the same rows in opposite
# orders (a VIP case's tier step and the monthly evaluation) end this way.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001", "55P03"})


CONCURRENT_CHANGE_DETAIL = ("another change to the same records collided with this one and the database rolled "
                            "this one back; nothing was saved: send the request again")


def rolled_back_by_another(exc: OperationalError) -> bool:
    """The database rolled the transaction back because of another one: sent again, it can go
    through."""
    return getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES


def _handle_database_error(exc: OperationalError) -> Response:
    if not rolled_back_by_another(exc):
        raise exc  # not the request's to retry: Flask's 500 (problem+json) and its log line
    current_app.logger.warning("rolled back by the database (SQLSTATE %s), answered 503: %s",
                               getattr(exc.orig, "sqlstate", None), exc.orig)
    return problem(503, "concurrent_change", "concurrent change", CONCURRENT_CHANGE_DETAIL,
                   headers={"Retry-After": "1"})


class ProblemApi(Api):  # type: ignore[misc]
    """flask-smorest's error handler, speaking problem+json like the engine errors."""

    # What flask-smorest documents for every error response (its own ErrorSchema describes
    # a payload this API never sends).
    ERROR_SCHEMA = ProblemDetailsOut
    # No catch-all "default" answer: each operation lists the errors it gives (api/openapi.py),
    # so a status the document does not name is a finding, not covered by a blanket entry.
    DEFAULT_ERROR_RESPONSE_NAME = None

    def handle_http_exception(self, error: HTTPException) -> Response:
        data = getattr(error, "data", None) or {}
        status = error.code or 500
        code = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type",
                422: "invalid_request"}.get(status, "error" if status < 500 else "internal_error")
        extra: dict[str, Any] = {}
        messages = data.get("messages")
        if messages:
            # webargs keys its messages by location ("json", "query"): an endpoint reads one
            # location, so the location adds nothing to the field's path.
            located = messages.values() if isinstance(messages, dict) else [messages]
            extra["errors"] = [entry for by_location in located for entry in field_errors(by_location)]
        detail = data.get("message") or (error.description if status < 500 else None)
        # The exception's own headers, but its HTML body's content type: a 405 must say
        # which methods the resource does allow (``Allow``, RFC 9110 §15.5.6).
        headers = {name: value for name, value in error.get_headers() if name.lower() != "content-type"}
        return problem(status, code, error.name, detail, headers=headers, **extra)

    def _register_responses(self) -> None:
        """flask-smorest's shared responses (``UNPROCESSABLE_ENTITY``, ``CONFLICT``, …), with
        the media type the errors are sent as: it would document them as application/json."""
        for status in http.HTTPStatus:
            response: dict[str, Any] = {"description": status.phrase}
            if not 100 <= status < 200 and status not in (204, 304):
                response["schema"] = self.ERROR_SCHEMA
            prepare_response(response, self.spec, PROBLEM)
            self.spec.components.response(status.name, response, lazy=True)
        # The 503 a writing request gets when PostgreSQL rolled it back (_handle_database_error).
        concurrent: dict[str, Any] = {
            "description": "concurrent_change: another change to the same records collided with this one and "
                           "the database rolled this one back; nothing was saved. Send the request again.",
            "schema": self.ERROR_SCHEMA,
            "headers": {"Retry-After": {"description": "seconds to wait before sending it again",
                                        "schema": {"type": "string", "enum": ["1"]}}},
        }
        prepare_response(concurrent, self.spec, PROBLEM)
        self.spec.components.response("CONCURRENT_CHANGE", concurrent, lazy=True)



def register(app: Flask) -> None:
    app.register_error_handler(errors.BpmError, _handle_engine_error)
    app.register_error_handler(OperationalError, _handle_database_error)
