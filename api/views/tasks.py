from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy.orm import Session

from api import bulk
from api.auth import current_actor
from api.context import bpm
from api.schemas import (
    AssignIn,
    BulkClaimIn,
    BulkClaimOut,
    BulkEscalateIn,
    BulkOut,
    BulkReassignIn,
    BulkRemindIn,
    CompleteIn,
    PauseIn,
    TaskCompletedOut,
    TaskDetailOut,
    TaskOut,
    TaskPageOut,
    TaskQuery,
    UserIn,
)
from engine.access.identity import Actor
from engine.models import Task
from engine.process import tasks

PREFIX = "/tasks"
blp = Blueprint("tasks", __name__, description="The inbox: find, claim and complete human tasks")


@blp.route("")
class Inbox(MethodView):
    @blp.arguments(TaskQuery, location="query")
    @blp.response(200, TaskPageOut)
    def get(self, query: dict[str, Any]) -> Any:
        """Tasks the caller may see, nearest deadline first (no due date last) unless
        ``sort`` says otherwise. Every filter narrows what the caller may see anyway.

        ``assignee=me``: my tasks (or a username: that person's); ``candidate=me``: unclaimed
        tasks of my groups; ``overdue=true``; ``at_risk=true``; ``due_within_hours=N``: due
        soon; ``process``, ``element``, ``business_key``, ``client_id``, ``group``, ``branch``."""
        ctx = bpm()
        actor = current_actor()
        assignee = query["assignee"]
        q = tasks.InboxQuery(
            assignee_me=assignee == "me", assignee=assignee if assignee not in (None, "me") else None,
            candidate_me=query["candidate"] == "me",
            status=tuple(query["status"]), overdue=query["overdue"], at_risk=query["at_risk"],
            due_within=(timedelta(hours=query["due_within_hours"])
                        if query["due_within_hours"] is not None else None),
            process_key=query["process"], element_id=query["element"], business_key=query["business_key"],
            client_id=query["client_id"], group=query["group"], branch=query["branch"], sort=query["sort"],
            limit=query["limit"], offset=query["offset"],
        )
        with ctx.db.transaction() as session:
            items, total = tasks.inbox(session, actor=actor, query=q, now=ctx.runtime.now())
            return {"items": items, "total": total, "limit": q.limit, "offset": q.offset}


@blp.route("/claim")
class BulkClaim(MethodView):
    @blp.arguments(BulkClaimIn)
    @blp.response(200, BulkClaimOut)
    def post(self, body: dict[str, Any]) -> Any:
        """Claim several tasks: each in a transaction of its own, so a task taken meanwhile or not
        the caller's to claim is reported and the others are claimed. A task named twice is
        claimed once."""
        outcomes = bulk.claim_each(bpm(), current_actor(), body["task_ids"])
        claimed = sum(1 for outcome in outcomes if outcome.done)
        return {"claimed": claimed, "refused": len(outcomes) - claimed, "results": outcomes}


def _bulk(outcomes: list[bulk.Outcome]) -> dict[str, Any]:
    done = sum(1 for outcome in outcomes if outcome.done)
    return {"done": done, "refused": len(outcomes) - done, "results": outcomes}


@blp.route("/remind")
class BulkRemind(MethodView):
    @blp.arguments(BulkRemindIn)
    @blp.response(200, BulkOut)
    def post(self, body: dict[str, Any]) -> Any:
        """A supervisor reminds whoever holds each step (or, unclaimed, its groups' members),
        with a reason; each task in a transaction of its own, each result reported (audited as
        ``task.reminded``)."""
        return _bulk(bulk.remind_each(bpm(), current_actor(), body["task_ids"], body["reason"]))


@blp.route("/reassign")
class BulkReassign(MethodView):
    @blp.arguments(BulkReassignIn)
    @blp.response(200, BulkOut)
    def post(self, body: dict[str, Any]) -> Any:
        """A supervisor gives each step to ``username``, who must be one of its candidates
        (anyone else, or someone it recuses, is that task's refusal), with a reason (audited)."""
        return _bulk(bulk.reassign_each(bpm(), current_actor(), body["task_ids"], body["username"],
                                        body["reason"]))


@blp.route("/escalate")
class BulkEscalate(MethodView):
    @blp.arguments(BulkEscalateIn)
    @blp.response(200, BulkOut)
    def post(self, body: dict[str, Any]) -> Any:
        """A supervisor escalates each step to the level above (``to``, or where its deadline
        policy escalates): an escalation task offered to that group, its members notified with
        the reason (audited as ``task.escalated``). A step whose escalation is still open is
        that task's 409."""
        return _bulk(bulk.escalate_each(bpm(), current_actor(), body["task_ids"], body["reason"], body["to"]))


@blp.route("/<int:task_id>")
class TaskDetail(MethodView):
    @blp.response(200, TaskDetailOut)
    def get(self, task_id: int) -> Any:
        """One task with its form (JSON Schema)."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            task = tasks.get(session, task_id, actor=actor)
            return _With(task, form=tasks.form_of(session, ctx.runtime, task))


class _With:
    """A task plus fields of the response beside its own (its form; the next tasks), read
    by the response schema like the task itself."""

    def __init__(self, task: Any, **extra: Any) -> None:
        self._task = task
        self.__dict__.update(extra)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)


def _command(name: str, doc: str, body_schema: Any = None, out: Any = TaskOut,
             respond: Callable[[Session, Actor, Task], Any] | None = None) -> None:
    """Register ``POST /tasks/<id>/<name>`` calling ``engine.tasks.<name>``; the body
    schema's fields are the service's keyword arguments. ``respond`` builds the response
    from the task, in the same transaction, for an ``out`` schema that says more."""
    service = getattr(tasks, name)

    def view(task_id: int, body: dict[str, Any] | None = None) -> Any:
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            task = service(session, ctx.runtime, task_id=task_id, actor=actor, **(body or {}))
            return respond(session, actor, task) if respond is not None else task

    if body_schema is not None:
        def endpoint(body: dict[str, Any], task_id: int) -> Any:
            return view(task_id, body)

        endpoint = blp.arguments(body_schema)(endpoint)
    else:
        def endpoint(task_id: int) -> Any:  # type: ignore[misc]
            return view(task_id)

    endpoint.__doc__ = doc
    endpoint.__name__ = name
    blp.route(f"/<int:task_id>/{name}", methods=["POST"], endpoint=name)(
        blp.response(200, out)(endpoint)
    )


_command("claim", "Claim an open task of one of my groups.")
_command("unclaim", "Give a claimed task back to its groups (assignee or supervisor).")
_command("assign", "Give the task to a user (supervisor): a member of one of its candidate groups, or anyone "
         "else with a ``reason`` (an audited override).", AssignIn)
_command("delegate", "Hand my task to a colleague; I stay its owner.", UserIn)
_command("complete", "Complete the task with its form data (validated against the form). "
         "``next_tasks``: the tasks the completion opened that the caller may see.", CompleteIn,
         out=TaskCompletedOut,
         respond=lambda session, actor, task: _With(task, next_tasks=tasks.opened(session, actor)))
_command("pause", "Waiting for the client: stop the task's SLA clock (assignee or supervisor).", PauseIn)
_command("resume", "The client answered: restart the clock; the due date moves by the pause.")
