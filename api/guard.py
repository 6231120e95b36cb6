"""What every API request passes before its endpoint runs: who is asking, then whether its
input can be read and stored at all.

Authentication comes first, so a caller without a valid token learns nothing from the
validation of their request (a 422 naming the fields would describe the endpoint to
anyone). Then every text the request carries (query parameters, path segments, JSON
strings and keys, form fields, file names) must be text a database can store: no U+0000,
which PostgreSQL's text and JSON columns cannot hold, and no unpaired surrogate, which
UTF-8 cannot encode. A JSON body must be readable (UTF-8, numbers Python accepts, nested no
deeper than the engine takes case data). Each refusal is a 4xx problem: the endpoint, and
the database behind it, never sees such input.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask, request
from flask_smorest import abort
from werkzeug.routing import BaseConverter, IntegerConverter, ValidationError

from api.auth import current_actor
from engine.bpmn.values import MAX_DEPTH, text_problem, value_problems

API_PREFIX = "/api/v1/"
# Signing in and reading the API's description need no token.
PUBLIC_ENDPOINTS = frozenset({"auth.Login", "api-docs.openapi_json"})
# Ids are the database's signed 64-bit integers.
MAX_ID = 2**63 - 1


class IdConverter(IntegerConverter):
    """``<int:…>`` in this API: an id the database can hold. A larger number names nothing,
    so it matches no route (404) instead of overflowing the query; so does a number too
    long for Python to read."""

    def __init__(self, map: Any, fixed_digits: int = 0, min: int | None = None, max: int | None = None,
                 signed: bool = False) -> None:
        super().__init__(map, fixed_digits, min, MAX_ID if max is None else max, signed)

    def to_python(self, value: str) -> Any:
        if len(value.lstrip("0")) > len(str(MAX_ID)):
            raise ValidationError()
        return super().to_python(value)


class DayConverter(BaseConverter):
    """``<day:…>``: a path segment that names a calendar day (YYYY-MM-DD), documented as one.
    The endpoint reads it, so a segment that is no date gets a 400 with the reason, and the
    engine says which days it takes (1990 to 2099)."""


def register(app: Flask) -> None:
    """Install the converters (before any route is added) and the checks."""
    app.url_map.converters["int"] = IdConverter
    app.url_map.converters["day"] = DayConverter
    app.before_request(_guard)


def _guard() -> None:
    if not request.path.startswith(API_PREFIX):
        return
    if request.endpoint not in PUBLIC_ENDPOINTS:
        current_actor()  # raises AuthenticationFailed: 401
    problems = _text_problems() + _body_problems()
    if problems:
        # The same answer as a request schema's refusal: 422 invalid_request, one entry a field.
        abort(422, messages={"request": {field: [message] for field, message in problems}},
              message="the request carries text that cannot be stored")


def _text_problems() -> list[tuple[str, str]]:
    """Query parameters, path segments, form fields and uploaded files' names."""
    named: list[tuple[str, Any]] = []
    named += [(key, value) for key, values in request.args.lists() for value in [key, *values]]
    named += [(key, value) for key, value in (request.view_args or {}).items()]
    if request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        named += [(key, value) for key, values in request.form.lists() for value in [key, *values]]
        named += [(key, value) for key, uploads in request.files.lists()
                  for value in [key, *(upload.filename or "" for upload in uploads)]]
    return [(field, message) for field, value in named
            if isinstance(value, str) and (message := text_problem(value))]


def _body_problems() -> list[tuple[str, str]]:
    if not request.is_json:
        return []
    raw = request.get_data(cache=True)
    if not raw:
        return []
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        abort(400, message="the body is not UTF-8 text")
    except json.JSONDecodeError:
        return []  # the endpoint's parser answers 400 with where the JSON broke
    except ValueError:  # Python reads integers of at most 4300 digits
        abort(400, message="the body holds a number too long to read (more than 4300 digits)")
    except RecursionError:
        abort(400, message=f"the body is nested too deeply (at most {MAX_DEPTH} levels of case data)")
    # The body wraps case variables in one object ({"data": {…}}): one level more than a
    # variable may nest.
    return [(p.field, p.message) for p in value_problems(body, max_depth=MAX_DEPTH + 1)]
