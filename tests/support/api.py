"""Talking to the API as a client does: sign in, start a case, read the inbox, and check an
error's problem document."""

from __future__ import annotations

from datetime import datetime
from typing import Any

API = "/api/v1"


def login(client: Any, username: str, password: str | None = None) -> dict[str, str]:
    """Bearer headers from a fresh sign-in (at the current, possibly travelled, time); the
    personas' password is ``<username>-pw``."""
    response = client.post(f"{API}/auth/login", json={"username": username, "password": password or f"{username}-pw"})
    assert response.status_code == 200, response.get_data(as_text=True)
    return {"Authorization": f"Bearer {response.json['token']}"}


def start(client: Any, headers: dict[str, str], business_key: str, *, process: str = "review",
          due: datetime | None = None, priority: int | None = None, **data: Any) -> dict[str, Any]:
    """Start ``process`` (the review fixture unless told) and return the new instance; the
    review fixture takes its due date and priority from the start data."""
    body = {"business_key": business_key,
            "data": {"priority": priority, "due_at": due.isoformat() if due else None, **data}}
    response = client.post(f"{API}/processes/{process}/instances", json=body, headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    result: dict[str, Any] = response.json
    return result


def inbox(client: Any, headers: dict[str, str], query: str = "") -> dict[str, Any]:
    """One page of ``GET /tasks?query``."""
    response = client.get(f"{API}/tasks?{query}", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    page: dict[str, Any] = response.json
    return page


def task_of(client: Any, headers: dict[str, str], business_key: str) -> dict[str, Any]:
    """The one open task of a case, as its reader sees it."""
    (task,) = inbox(client, headers, f"business_key={business_key}")["items"]
    return task


def command(client: Any, headers: dict[str, str], task_id: int, name: str, body: dict[str, Any] | None = None) -> Any:
    """``POST /tasks/{id}/{name}`` (claim, complete, delegate, ...); the response unchecked."""
    return client.post(f"{API}/tasks/{task_id}/{name}", json=body if body is not None else {}, headers=headers)


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """An ``application/problem+json`` error with the given status and stable code, carrying
    the members every error has (status, code, title, detail); returns the body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body
