"""The append-only, hash-chained audit trail.

Each event's hash covers its content and the hash of the previous event of the same
stream. Streams are per instance (``instance:<id>``) plus ``system`` for deployments and
users: one global chain would make every transaction in the product wait for one row.
An instance's chain head lives on its row, which every change already locks; other heads
live in ``bpm_audit_stream`` and are locked for the append.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import insert, select
from sqlalchemy.orm import Session, SessionTransaction

from engine.models import AuditEvent, AuditStream, ProcessInstance

SYSTEM_STREAM = "system"


def _digest(prev_hash: str, *, stream: str, seq: int, occurred_at: datetime, actor: str | None,
            kind: str, instance_id: int | None, task_uuid: str | None, data: dict[str, Any]) -> str:
    body = json.dumps(
        [stream, seq, occurred_at.isoformat(timespec="microseconds"), actor, kind, instance_id,
         task_uuid, data],
        sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str,
    )
    return hashlib.sha256(f"{prev_hash}|{body}".encode()).hexdigest()


def _row(stream: str, seq: int, prev_hash: str, *, at: datetime, actor: str | None, kind: str,
         instance_id: int | None, task_uuid: str | None, data: dict[str, Any]) -> dict[str, Any]:
    data = json.loads(json.dumps(data, default=str))  # what is hashed is what is stored
    digest = _digest(prev_hash, stream=stream, seq=seq, occurred_at=at, actor=actor, kind=kind,
                     instance_id=instance_id, task_uuid=task_uuid, data=data)
    return {"stream": stream, "seq": seq, "occurred_at": at, "actor": actor, "kind": kind,
            "instance_id": instance_id, "task_uuid": task_uuid, "data": data, "prev_hash": prev_hash,
            "hash": digest}


_INSERT_EVENT = insert(AuditEvent)
_PENDING = "bpm_audit_pending"


def record_instance_event(session: Session, instance: ProcessInstance, *, kind: str,
                          actor: str | None, at: datetime, data: dict[str, Any] | None = None,
                          task_uuid: str | None = None) -> None:
    """Append to the instance's chain. The caller holds the instance row lock (and has
    flushed a new instance: the row is inserted at once).

    The row is written with the session's next flush, together with the other events of the
    transaction in one multi-row INSERT: a step writes two or three events, and a statement
    each was a sixth of a step's cost. The chain head moves on the instance now, so the
    instance is dirty and that flush is certain to come (at the latest at commit)."""
    seq = instance.audit_seq + 1
    row = _row(f"instance:{instance.id}", seq, instance.audit_head, at=at, actor=actor,
               kind=kind, instance_id=instance.id, task_uuid=task_uuid, data=data or {})
    instance.audit_seq = seq
    instance.audit_head = row["hash"]
    session.info.setdefault(_PENDING, []).append(row)


def write_pending(session: Session) -> None:
    """Insert the events recorded since the last write (every ORM flush does this)."""
    rows = session.info.pop(_PENDING, None)
    if rows:
        session.connection().execute(_INSERT_EVENT, rows)


@sa_event.listens_for(Session, "after_flush")
def _write_after_flush(session: Session, _context: Any) -> None:
    # After, not before: a new instance's row must exist before its events reference it.
    write_pending(session)


@sa_event.listens_for(Session, "before_commit")
def _write_before_commit(session: Session) -> None:
    write_pending(session)


@sa_event.listens_for(Session, "after_soft_rollback")
def _drop_on_rollback(session: Session, _previous: SessionTransaction) -> None:
    # Events of a rolled-back savepoint or transaction never happened. Nothing older is
    # pending here: beginning a savepoint flushes first, which writes them.
    session.info.pop(_PENDING, None)


def record_system_event(session: Session, *, kind: str, actor: str | None, at: datetime,
                        data: dict[str, Any] | None = None, stream: str = SYSTEM_STREAM) -> AuditEvent:
    head = session.execute(
        select(AuditStream).where(AuditStream.stream == stream).with_for_update()
    ).scalar_one_or_none()
    if head is None:
        head = AuditStream(stream=stream, seq=0, head="")
        session.add(head)
    event = AuditEvent(**_row(stream, head.seq + 1, head.head, at=at, actor=actor, kind=kind,
                              instance_id=None, task_uuid=None, data=data or {}))
    head.seq, head.head = event.seq, event.hash
    session.add(event)
    return event


@dataclass(frozen=True)
class BrokenLink:
    stream: str
    seq: int
    event_id: int
    reason: str

    def format(self) -> str:
        return f"{self.stream} #{self.seq} (event {self.event_id}): {self.reason}"


@dataclass(frozen=True)
class VerifyReport:
    streams: int
    events: int
    broken: list[BrokenLink]


def verify(session: Session) -> VerifyReport:
    """Recompute every chain and compare its end with the stored head, so a deleted last
    event is caught too; report the first broken link of each stream."""
    broken: list[BrokenLink] = []
    last: dict[str, tuple[int, str, int]] = {}
    events = 0
    current: str | None = None
    prev_hash, expected_seq, stream_broken = "", 1, False
    rows = session.execute(
        select(AuditEvent).order_by(AuditEvent.stream, AuditEvent.seq)
        .execution_options(yield_per=2000)
    ).scalars()
    for event in rows:
        events += 1
        if event.stream != current:
            current, prev_hash, expected_seq, stream_broken = event.stream, "", 1, False
        if stream_broken:
            continue
        reason = None
        if event.seq != expected_seq:
            reason = f"expected sequence {expected_seq}, found {event.seq} (an event is missing)"
        elif event.prev_hash != prev_hash:
            reason = "previous-hash does not match the preceding event"
        elif event.hash != _digest(prev_hash, stream=event.stream, seq=event.seq,
                                   occurred_at=event.occurred_at, actor=event.actor,
                                   kind=event.kind, instance_id=event.instance_id,
                                   task_uuid=event.task_uuid, data=event.data):
            reason = "content does not match its hash (the event was altered)"
        if reason:
            broken.append(BrokenLink(event.stream, event.seq, event.id, reason))
            stream_broken = True
            last.pop(event.stream, None)
            continue
        prev_hash, expected_seq = event.hash, expected_seq + 1
        last[event.stream] = (event.seq, event.hash, event.id)

    heads = {f"instance:{i}": (seq, head) for i, seq, head in session.execute(
        select(ProcessInstance.id, ProcessInstance.audit_seq, ProcessInstance.audit_head))}
    heads.update({s: (seq, head) for s, seq, head in session.execute(
        select(AuditStream.stream, AuditStream.seq, AuditStream.head))})
    broken_streams = {b.stream for b in broken}
    for stream, (seq, head) in heads.items():
        if stream in broken_streams or seq == 0:
            continue
        found = last.get(stream)
        if found is None or (found[0], found[1]) != (seq, head):
            at = found[0] if found else 0
            broken.append(BrokenLink(stream, at + 1, found[2] if found else 0,
                                     f"chain ends at #{at} but the head says #{seq} "
                                     "(events were removed from the end)"))
    return VerifyReport(streams=len(heads), events=events, broken=broken)
