"""The one place where engine errors become HTTP: ``application/problem+json`` (RFC 9457)
with a stable ``code`` taken from the exception class."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response, json
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from engine import errors

PROBLEM = "application/problem+json"

# Most specific first: the first matching class decides the status.
STATUS: list[tuple[type[errors.BpmError], int]] = [
    (errors.AuthenticationFailed, 401),
    (errors.PermissionDenied, 403),
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.FormValidationError, 422),
    (errors.DeploymentRejected, 422),
    (errors.InvalidInput, 400),
    (errors.ConfigError, 500),
]


def status_for(exc: errors.BpmError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def problem(status: int, code: str, title: str, detail: str | None = None, **extra: Any) -> Response:
    body = {"type": "about:blank", "status": status, "code": code, "title": title}
    if detail:
        body["detail"] = detail
    body.update(extra)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return Response(json.dumps(body, ensure_ascii=False), status=status, mimetype=PROBLEM,
                    headers=headers)


def _handle_engine_error(exc: errors.BpmError) -> Response:
    status = status_for(exc)
    return problem(status, exc.code, exc.code.replace("_", " "), exc.message, **exc.details)


class ProblemApi(Api):  # type: ignore[misc]
    """flask-smorest's error handler, speaking problem+json like the engine errors."""

    def handle_http_exception(self, error: HTTPException) -> Response:
        data = getattr(error, "data", None) or {}
        status = error.code or 500
        code = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type",
                422: "invalid_request"}.get(status, "error" if status < 500 else "internal_error")
        extra = {}
        if "errors" in data or "messages" in data:
            extra["errors"] = data.get("errors") or data.get("messages")
        detail = data.get("message") or (error.description if status < 500 else None)
        return problem(status, code, error.name, detail, **extra)


def register(app: Flask) -> None:
    app.register_error_handler(errors.BpmError, _handle_engine_error)
