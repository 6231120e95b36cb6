"""Moving chosen cases to another version, for the API, the pages and the CLI alike: the
cases are chosen in one read, then each is tried (dry run) or moved in a transaction of its
own, in batches, so one refusal or failure costs only that case, and each case's outcome is
reported. A refused case stays where it is, with the reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import OperationalError

from api.errors import CONCURRENT_CHANGE_DETAIL, rolled_back_by_another
from engine import errors
from engine.access.identity import Actor
from engine.access.masking import mask_text
from engine.bpmn.diff import Words
from engine.db import Database
from engine.process import migration
from engine.process.runtime import Runtime

DEFAULT_BATCH = 50


@dataclass
class Report:
    process_key: str
    to_version: int
    dry_run: bool
    batch_size: int
    outcomes: list[migration.CaseOutcome] = field(default_factory=list)
    batches: int = 0

    @property
    def movable(self) -> int:
        return sum(1 for o in self.outcomes if o.can_move)

    @property
    def moved(self) -> int:
        return sum(1 for o in self.outcomes if o.moved)

    @property
    def refused(self) -> int:
        return sum(1 for o in self.outcomes if not o.can_move)

    def as_dict(self) -> dict[str, Any]:
        return {
            "process_key": self.process_key, "to_version": self.to_version, "dry_run": self.dry_run,
            "batch_size": self.batch_size, "batches": self.batches, "cases": len(self.outcomes),
            "movable": self.movable, "moved": self.moved, "refused": self.refused,
            "outcomes": [outcome_dict(o) for o in self.outcomes],
        }


def outcome_dict(outcome: migration.CaseOutcome) -> dict[str, Any]:
    return {
        "instance_id": outcome.instance_id, "business_key": outcome.business_key,
        "from_version": outcome.from_version, "to_version": outcome.to_version,
        "can_move": outcome.can_move, "moved": outcome.moved,
        "reasons": [{"code": r.code, "message": mask_text(r.words.zh), "message_en": mask_text(r.words.en)}
                    for r in outcome.reasons],
        "changes": [{"message": mask_text(w.zh), "message_en": mask_text(w.en)} for w in outcome.changes],
    }


def run(db: Database, rt: Runtime, actor: Actor, process_key: str, to_version: int,
        selection: migration.Selection, *, dry_run: bool, batch_size: int = DEFAULT_BATCH,
        limit: int = migration.MAX_CASES) -> Report:
    """Choose the cases, then try or move each in its own transaction, ``batch_size`` at a
    time. Refusals of the whole request (not an owner, no such process or version) raise."""
    if batch_size < 1:
        raise errors.InvalidInput("batch_size must be at least 1")
    with db.transaction() as session:
        chosen = migration.select_cases(session, process_key, to_version, selection, actor=actor, limit=limit)
    report = Report(process_key, to_version, dry_run, batch_size)
    for start in range(0, len(chosen), batch_size):
        report.batches += 1
        for instance_id in chosen[start:start + batch_size]:
            report.outcomes.append(_one(db, rt, actor, process_key, to_version, instance_id, dry_run=dry_run))
    return report


def _one(db: Database, rt: Runtime, actor: Actor, process_key: str, to_version: int, instance_id: int, *,
         dry_run: bool) -> migration.CaseOutcome:
    call = migration.dry_run if dry_run else migration.migrate
    try:
        with db.transaction() as session:
            return call(session, rt, instance_id=instance_id, process_key=process_key, to_version=to_version,
                        actor=actor)
    except errors.BpmError as exc:
        failed = migration.CaseOutcome(instance_id, "", None, to_version)
        failed.refuse(exc.code, f"无法迁移：{exc.message}", exc.message)
        return failed
    except OperationalError as exc:
        if not rolled_back_by_another(exc):
            raise
        busy = migration.CaseOutcome(instance_id, "", None, to_version)
        busy.refuse("concurrent_change", "案件正被他人同时修改，请稍后重试", CONCURRENT_CHANGE_DETAIL)
        return busy


def words_dict(words: Words) -> dict[str, str]:
    return {"message": mask_text(words.zh), "message_en": mask_text(words.en)}
