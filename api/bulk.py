"""Commands on several tasks at once (claim; a supervisor's reminder, reassignment and
escalation), for
the API and the pages alike: each task in a transaction of its own, so one refusal (taken
meanwhile, not the caller's to claim, not a candidate's) costs only that task, and each
task's result is reported."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from api.context import BpmContext
from api.errors import CONCURRENT_CHANGE_DETAIL, rolled_back_by_another, status_for
from engine import errors
from engine.access.identity import Actor
from engine.access.masking import mask_text
from engine.process import supervision, tasks

# One request claims at most this many: a page of the inbox is 50.
MAX_TASKS = 100


@dataclass(frozen=True)
class Outcome:
    task_id: int
    status: int  # 200 claimed, or the status a single claim of this task would have answered
    code: str | None = None  # the refusal's code (not_found, task_not_claimable, …)
    detail: str | None = None  # why not, identifiers masked

    @property
    def done(self) -> bool:
        return self.status == 200


def claim_each(ctx: BpmContext, actor: Actor, task_ids: Iterable[int]) -> list[Outcome]:
    """Claim each task (each once, in the order given) in its own transaction."""
    return each(ctx, task_ids, lambda session, task_id: tasks.claim(session, ctx.runtime, task_id=task_id,
                                                                     actor=actor))


def remind_each(ctx: BpmContext, actor: Actor, task_ids: Iterable[int], reason: str | None) -> list[Outcome]:
    return each(ctx, task_ids, lambda session, task_id: supervision.remind(
        session, ctx.runtime, task_id=task_id, actor=actor, reason=reason))


def reassign_each(ctx: BpmContext, actor: Actor, task_ids: Iterable[int], username: str,
                  reason: str | None) -> list[Outcome]:
    return each(ctx, task_ids, lambda session, task_id: supervision.reassign(
        session, ctx.runtime, task_id=task_id, username=username, actor=actor, reason=reason))


def escalate_each(ctx: BpmContext, actor: Actor, task_ids: Iterable[int], reason: str | None,
                  to: str | None) -> list[Outcome]:
    return each(ctx, task_ids, lambda session, task_id: supervision.escalate(
        session, ctx.runtime, task_id=task_id, actor=actor, reason=reason, to=to))


def each(ctx: BpmContext, task_ids: Iterable[int], command: Callable[[Session, int], Any]) -> list[Outcome]:
    """Run ``command`` on each task (each once, in the order given) in its own transaction;
    a refusal is that task's result, in the words and status the single command would give."""
    outcomes = []
    for task_id in dict.fromkeys(task_ids):
        try:
            with ctx.db.transaction() as session:
                command(session, task_id)
        except errors.BpmError as exc:
            outcomes.append(Outcome(task_id, status_for(exc), exc.code, mask_text(exc.message)))
        except OperationalError as exc:
            if not rolled_back_by_another(exc):
                raise
            outcomes.append(Outcome(task_id, 503, "concurrent_change", CONCURRENT_CHANGE_DETAIL))
        else:
            outcomes.append(Outcome(task_id, 200))
    return outcomes
