"""Commands on several tasks at once, for the API and the pages alike: each task in a
transaction of its own, so one refusal (taken meanwhile, not the caller's to claim) costs
only that task, and each task's result is reported."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.exc import OperationalError

from api.context import BpmContext
from api.errors import RETRYABLE_SQLSTATES, status_for
from engine import errors
from engine.access.identity import Actor
from engine.access.masking import mask_text
from engine.process import tasks

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
    outcomes = []
    for task_id in dict.fromkeys(task_ids):
        try:
            with ctx.db.transaction() as session:
                tasks.claim(session, ctx.runtime, task_id=task_id, actor=actor)
        except errors.BpmError as exc:
            outcomes.append(Outcome(task_id, status_for(exc), exc.code, mask_text(exc.message)))
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) not in RETRYABLE_SQLSTATES:
                raise
            outcomes.append(Outcome(task_id, 503, "concurrent_change",
                                    "another change to the task collided with this one; nothing was saved: "
                                    "claim it again"))
        else:
            outcomes.append(Outcome(task_id, 200))
    return outcomes
