"""The append-only, hash-chained audit trail.

Each event's hash covers its content (stream, sequence number, time, actor, kind, instance,
task and data) and the hash of the previous event of the same stream. Streams are per
instance (``instance:<id>``) plus ``system`` for deployments and users: one global chain would
make every transaction in the product wait for one row. An instance's chain head lives on its
row, which every change already locks; other heads live in ``bpm_audit_stream`` and are locked
for the append.

A chain whose head sits in the same database proves nothing to someone who can write that
database: they can edit an event and recompute every hash after it, or delete a stream's last
events and move its head back. Two things outside the database close that
(docs/operations.md#audit-trail):

- **the key.** With ``BPM_AUDIT_KEY`` set, each hash is an HMAC-SHA256 under a key derived from
  it, which the database never holds: an edited event cannot be given a hash that verifies.
  Without it (the embedded SQLite default only; production refuses to write unkeyed) the
  chain is plain SHA-256, as it was before the key existed.
- **anchors.** A key cannot show that the last events were removed, since what is left is a
  valid chain. ``anchor`` writes, outside the database (``BPM_AUDIT_ANCHOR_DIR``), a file
  signed with the key that pins every stream's head that moved since the previous anchor
  (sequence number and hash), numbered and linked to the one before it; ``verify`` checks
  every chain against the newest pin of its stream. What happened after the newest anchor is
  protected by the key alone: run ``bpm audit anchor`` often.

Events written before the key was set keep their plain hashes. ``verify`` accepts a plain
event when something the key protects pins it: a keyed event later in its stream (whose hash
covers the plain one's), or an anchor at or after it; the first ``bpm audit anchor`` after
setting the key pins every stream as it then is (the migration point). A plain event that
nothing pins, or one after a keyed event, is reported: it cannot be told from a rewrite.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import and_, insert, or_, select
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session, SessionTransaction

from engine.config import AUDIT_ANCHOR_DIR, AUDIT_KEY
from engine.db import AUDIT_KEY_INFO
from engine.errors import AuditAnchorInvalid, ConfigError
from engine.models import AuditEvent, AuditStream, ProcessInstance

SYSTEM_STREAM = "system"
ANCHOR_FORMAT = "bpm-audit-anchor/1"
ANCHOR_GLOB = "audit-anchor-*.json"


# -- the key ------------------------------------------------------------------------------------
class AuditKey:
    """What the secret is used for, each under a key of its own derived from it: the chain's
    HMAC, the anchors' signature, and an id that names the key without revealing it."""

    def __init__(self, secret: bytes) -> None:
        def derive(purpose: bytes) -> bytes:
            return hmac.new(secret, purpose, hashlib.sha256).digest()

        # The keyed state after the key's two blocks, copied per event: an HMAC then costs the
        # hashing of the message and two more blocks, not a key schedule each time.
        self._chain = hmac.new(derive(b"bpm audit chain v1"), digestmod=hashlib.sha256)
        self._anchor = derive(b"bpm audit anchor v1")
        self.key_id = derive(b"bpm audit key id v1").hex()[:16]

    def mac(self, message: bytes) -> str:
        keyed = self._chain.copy()
        keyed.update(message)
        return keyed.hexdigest()

    def sign(self, document: bytes) -> str:
        return hmac.new(self._anchor, document, hashlib.sha256).hexdigest()


@lru_cache(maxsize=4)
def key_from(secret: bytes) -> AuditKey:
    return AuditKey(secret)


def key_of(session: Session) -> AuditKey | None:
    """The key of the database this session belongs to (``engine.db.Database``), if any."""
    secret = session.info.get(AUDIT_KEY_INFO)
    return key_from(secret) if secret is not None else None


def _writing_key(session: Session) -> AuditKey | None:
    key = key_of(session)
    if key is None and session.get_bind().dialect.name != "sqlite":
        # An unkeyed event in a keyed chain would make the chain fail verification from there
        # on: refuse it, so a shell without the key cannot spoil production's trail.
        raise ConfigError(f"{AUDIT_KEY} is not set: on PostgreSQL the audit trail is written only with its key "
                          "(docs/operations.md#audit-trail)")
    return key


# -- hashing ------------------------------------------------------------------------------------
def _message(prev_hash: str, *, stream: str, seq: int, occurred_at: datetime, actor: str | None,
             kind: str, instance_id: int | None, task_uuid: str | None, data: dict[str, Any]) -> bytes:
    body = json.dumps(
        [stream, seq, occurred_at.isoformat(timespec="microseconds"), actor, kind, instance_id,
         task_uuid, data],
        sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str,
    )
    return f"{prev_hash}|{body}".encode()


def _plain(message: bytes) -> str:
    return hashlib.sha256(message).hexdigest()


def _row(key: AuditKey | None, stream: str, seq: int, prev_hash: str, *, at: datetime, actor: str | None,
         kind: str, instance_id: int | None, task_uuid: str | None, data: dict[str, Any]) -> dict[str, Any]:
    # What is hashed is what is stored: values JSON would change go through it first.
    data = dict(data) if _plain_json(data) else json.loads(json.dumps(data, default=str))
    message = _message(prev_hash, stream=stream, seq=seq, occurred_at=at, actor=actor, kind=kind,
                       instance_id=instance_id, task_uuid=task_uuid, data=data)
    return {"stream": stream, "seq": seq, "occurred_at": at, "actor": actor, "kind": kind,
            "instance_id": instance_id, "task_uuid": task_uuid, "data": data, "prev_hash": prev_hash,
            "hash": key.mac(message) if key is not None else _plain(message)}


# Exactly these types: a subclass (a StrEnum, an IntEnum) is written as its plain value.
_EXACT = frozenset((str, int, bool, type(None)))


def _plain_json(data: dict[str, Any]) -> bool:
    """Whether ``data`` reads back from JSON exactly as it is (text keys; text, integer, boolean
    or null values), so the round trip that makes what is hashed what is stored can be skipped:
    most events (a timer fired, an instance completed) carry only such values."""
    return all(type(k) is str and type(v) in _EXACT for k, v in data.items())


def _event_message(event: AuditEvent, prev_hash: str) -> bytes:
    return _message(prev_hash, stream=event.stream, seq=event.seq, occurred_at=event.occurred_at,
                    actor=event.actor, kind=event.kind, instance_id=event.instance_id,
                    task_uuid=event.task_uuid, data=event.data)


# -- writing ------------------------------------------------------------------------------------
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
    row = _row(_writing_key(session), f"instance:{instance.id}", seq, instance.audit_head, at=at, actor=actor,
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
    key = _writing_key(session)
    head = session.execute(
        select(AuditStream).where(AuditStream.stream == stream).with_for_update()
    ).scalar_one_or_none()
    if head is None:
        head = AuditStream(stream=stream, seq=0, head="")
        session.add(head)
    event = AuditEvent(**_row(key, stream, head.seq + 1, head.head, at=at, actor=actor, kind=kind,
                              instance_id=None, task_uuid=None, data=data or {}))
    head.seq, head.head = event.seq, event.hash
    session.add(event)
    return event


# -- anchors ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Anchor:
    file: str
    number: int
    written_at: datetime
    heads: dict[str, tuple[int, str]]
    signature: str


@dataclass(frozen=True)
class Pin:
    """The newest anchored head of one stream."""

    seq: int
    hash: str
    anchor: Anchor

    def named(self) -> str:
        return f"anchor {self.anchor.number} ({self.anchor.file}, {self.anchor.written_at.isoformat()})"


def _canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def _anchor_directory(directory: Path) -> Path:
    if not directory.is_dir():
        # A missing mount must not be papered over by a fresh local directory.
        raise ConfigError(f"{AUDIT_ANCHOR_DIR} {str(directory)!r} is not a directory")
    return directory


def read_anchors(directory: Path, key: AuditKey) -> tuple[list[Anchor], list[str]]:
    """The anchors in ``directory`` in their order, and what is wrong with any of them (one
    that does not read, is not signed with this key, or does not follow the one before)."""
    anchors: list[Anchor] = []
    problems: list[str] = []
    previous: Anchor | None = None
    for path in sorted(_anchor_directory(directory).glob(ANCHOR_GLOB)):
        try:
            raw = json.loads(path.read_bytes())
            body = {k: v for k, v in raw.items() if k != "signature"}
            signature, number = str(raw["signature"]), int(raw["number"])
            if raw["format"] != ANCHOR_FORMAT:
                raise ValueError(f"format {raw['format']!r}, expected {ANCHOR_FORMAT!r}")
            if raw["key_id"] != key.key_id:
                problems.append(f"{path.name}: signed with another key (id {raw['key_id']}, this one is {key.key_id})")
                continue
            if not hmac.compare_digest(signature, key.sign(_canonical(body))):
                problems.append(f"{path.name}: the signature does not match (the file was altered or forged)")
                continue
            anchor = Anchor(file=path.name, number=number, written_at=datetime.fromisoformat(raw["written_at"]),
                            heads={str(s): (int(seq), str(h)) for s, (seq, h) in raw["heads"].items()},
                            signature=signature)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            problems.append(f"{path.name}: not an anchor: {exc}")
            continue
        expected = (previous.number + 1, previous.signature) if previous else (1, "")
        if (anchor.number, raw["previous"]) != expected:
            after = f"anchor {previous.number} ({previous.file})" if previous else "no anchor"
            problems.append(f"{path.name}: anchor {anchor.number} does not follow {after}: "
                            "an anchor is missing or was replaced")
        anchors.append(anchor)
        previous = anchor
    return anchors, problems


def _pins(anchors: Iterable[Anchor]) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    for anchor in anchors:
        for stream, (seq, digest) in anchor.heads.items():
            pins[stream] = Pin(seq, digest, anchor)
    return pins


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One anchor writer at a time on this host (two would both follow the same anchor). The
    lock file is kept out of the anchor directory, which may be write-once storage."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the embedded default on a desktop, one writer anyway
        yield
        return
    name = hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:16]
    with (Path(tempfile.gettempdir()) / f"bpm-audit-anchor-{name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class AnchorReport:
    file: Path | None  # None: no stream moved since the previous anchor
    number: int  # this anchor's number, or the previous one's when nothing was written
    streams: int  # streams pinned by this anchor
    broken: list[BrokenLink]  # streams not pinned: their new events do not verify


def anchor(session: Session, directory: Path, *, now: datetime) -> AnchorReport:
    """Pin the head of every stream that moved since the previous anchor in a new anchor file,
    after checking the events it adds (so a rewrite is not pinned as if it were the truth).
    The first anchor pins every stream, and accepts events written before the key was set:
    the migration point."""
    key = key_of(session)
    if key is None:
        raise ConfigError(f"{AUDIT_KEY} is not set: anchors are signed with the audit key")
    directory = _anchor_directory(directory)
    with _locked(directory):
        anchors, problems = read_anchors(directory, key)
        if problems:
            raise AuditAnchorInvalid(problems)
        pins = _pins(anchors)
        heads = _heads(session)
        broken = [BrokenLink(stream, pin.seq, 0, f"{pin.named()} pinned #{pin.seq} but the stream is gone")
                  for stream, pin in pins.items() if stream not in heads]
        moved = {stream: (seq, pins.get(stream)) for stream, (seq, _) in heads.items()
                 if seq > 0 and (stream not in pins or pins[stream].seq != seq)}
        new_heads, refused = _check_new_events(session, key, moved, legacy=not anchors)
        broken += refused
        number = anchors[-1].number if anchors else 0
        if not new_heads:
            return AnchorReport(None, number, 0, broken)
        body = {"format": ANCHOR_FORMAT, "number": number + 1, "written_at": now.astimezone(UTC).isoformat(),
                "key_id": key.key_id, "previous": anchors[-1].signature if anchors else "",
                "heads": {stream: [seq, digest] for stream, (seq, digest) in sorted(new_heads.items())}}
        document = json.dumps({**body, "signature": key.sign(_canonical(body))}, ensure_ascii=False, sort_keys=True)
        path = directory / f"audit-anchor-{number + 1:06d}-{now.astimezone(UTC):%Y%m%dT%H%M%S}Z.json"
        with path.open("x", encoding="utf-8") as handle:  # never over an existing anchor
            handle.write(document)
            handle.flush()
            os.fsync(handle.fileno())
        return AnchorReport(path, number + 1, len(new_heads), broken)


def _check_new_events(session: Session, key: AuditKey, moved: dict[str, tuple[int, Pin | None]], *,
                      legacy: bool) -> tuple[dict[str, tuple[int, str]], list[BrokenLink]]:
    """Walk the events of each moved stream (head sequence number, pin) after its pin: in
    sequence, linked to the pin, each hash a valid HMAC (or, at the migration point, a plain
    hash before any keyed one), up to the head. The streams that pass, with their last event;
    those that do not, with the first problem."""
    walked: dict[str, tuple[int, str, bool]] = {}  # stream -> (last seq, last hash, keyed seen)
    for stream, (_, pin) in moved.items():
        walked[stream] = (pin.seq, pin.hash, True) if pin is not None else (0, "", False)
    broken: list[BrokenLink] = []
    streams = sorted(moved)
    for start in range(0, len(streams), 200):
        after = [(stream, walked[stream][0]) for stream in streams[start:start + 200]]
        rows = session.execute(select(AuditEvent).where(or_(*(and_(AuditEvent.stream == s, AuditEvent.seq > n)
                                                                for s, n in after)))
                               .order_by(AuditEvent.stream, AuditEvent.seq)).scalars()
        for event in rows:
            if event.stream not in walked:
                continue  # refused already
            seq, prev, keyed = walked[event.stream]
            reason = None
            if event.seq != seq + 1:
                reason = f"expected sequence {seq + 1}, found {event.seq} (an event is missing)"
            elif event.prev_hash != prev:
                reason = "previous-hash does not match the preceding event"
            else:
                message = _event_message(event, prev)
                if event.hash == key.mac(message):
                    keyed = True
                elif not (legacy and not keyed and event.hash == _plain(message)):
                    reason = "content does not match its hash (the event was altered)"
            if reason:
                broken.append(BrokenLink(event.stream, event.seq, event.id, reason))
                del walked[event.stream]
                continue
            walked[event.stream] = (event.seq, event.hash, keyed)
    heads: dict[str, tuple[int, str]] = {}
    for stream, (seq, digest, _) in walked.items():
        head, pin = moved[stream]
        if seq < head or (pin is not None and seq <= pin.seq):
            pinned = f"; {pin.named()} pinned #{pin.seq}" if pin is not None else ""
            broken.append(BrokenLink(stream, seq + 1, 0, f"chain ends at #{seq} but the head says #{head}{pinned} "
                                     "(events were removed from the end)"))
            continue
        heads[stream] = (seq, digest)  # past the head read before: appended meanwhile, and verified
    return heads, broken


# -- verifying ----------------------------------------------------------------------------------
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
    keyed: bool = False
    # Events with a plain hash that a keyed event or an anchor pins (written before the key).
    plain_events: int = 0
    anchors: list[Anchor] = field(default_factory=list)
    anchor_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.broken and not self.anchor_problems


def _heads(session: Session) -> dict[str, tuple[int, str]]:
    heads = {f"instance:{i}": (seq, head) for i, seq, head in session.execute(
        select(ProcessInstance.id, ProcessInstance.audit_seq, ProcessInstance.audit_head))}
    heads.update({s: (seq, head) for s, seq, head in session.execute(
        select(AuditStream.stream, AuditStream.seq, AuditStream.head))})
    return heads


def verify(session: Session, *, anchors: Path | None = None) -> VerifyReport:
    """Recompute every chain (with the key of the session's database, if it has one) and
    compare its end with the stored head, so a deleted last event is caught too; with
    ``anchors``, check every chain against the newest pin of its stream as well. Report the
    first broken link of each stream."""
    key = key_of(session)
    found: list[Anchor] = []
    anchor_problems: list[str] = []
    if anchors is not None:
        if key is None:
            raise ConfigError(f"{AUDIT_ANCHOR_DIR} needs {AUDIT_KEY}: the anchors are signed with it")
        found, anchor_problems = read_anchors(anchors, key)
    pins = _pins(found)

    broken: list[BrokenLink] = []
    last: dict[str, tuple[int, str, int]] = {}
    events = plain_events = 0
    current: str | None = None
    prev_hash, expected_seq, stream_broken, keyed_seen = "", 1, False, False
    unpinned: tuple[int, int] | None = None  # the first plain event nothing pins yet: (seq, id)
    pin: Pin | None = None

    def unpinned_plain() -> None:
        if key is not None and unpinned is not None and not stream_broken and current is not None:
            broken.append(BrokenLink(
                current, unpinned[0], unpinned[1],
                "written without the audit key and pinned by no later keyed event nor any anchor: it cannot be "
                "told from a rewrite (events from before the key was set are pinned by anchoring once: "
                "bpm audit anchor)"))
            last.pop(current, None)

    rows = session.execute(
        select(AuditEvent).order_by(AuditEvent.stream, AuditEvent.seq).execution_options(yield_per=2000)
    ).scalars()
    for event in rows:
        events += 1
        if event.stream != current:
            unpinned_plain()
            current, prev_hash, expected_seq, stream_broken, keyed_seen = event.stream, "", 1, False, False
            unpinned, pin = None, pins.get(event.stream)
        if stream_broken:
            continue
        reason = None
        plain = False
        if event.seq != expected_seq:
            reason = f"expected sequence {expected_seq}, found {event.seq} (an event is missing)"
        elif event.prev_hash != prev_hash:
            reason = "previous-hash does not match the preceding event"
        else:
            message = _event_message(event, prev_hash)
            if key is not None and event.hash == key.mac(message):
                keyed_seen, unpinned = True, None  # its HMAC covers every hash before it
            elif event.hash == _plain(message):
                plain = True
                if key is not None and keyed_seen:
                    reason = "written without the audit key after keyed events (the chain was rewritten)"
            else:
                reason = "content does not match its hash (the event was altered)"
        pinned_here = False
        if reason is None and pin is not None and event.seq == pin.seq:
            pinned_here = True
            if event.hash != pin.hash:
                reason = f"differs from {pin.named()} (the event or one before it was rewritten)"
        if reason:
            broken.append(BrokenLink(event.stream, event.seq, event.id, reason))
            stream_broken = True
            last.pop(event.stream, None)
            continue
        if plain and key is not None:
            plain_events += 1
            if unpinned is None:
                unpinned = (event.seq, event.id)
        if pinned_here:
            unpinned = None  # the anchor pins this event, and through its hash every one before
        prev_hash, expected_seq = event.hash, expected_seq + 1
        last[event.stream] = (event.seq, event.hash, event.id)
    unpinned_plain()

    heads = _heads(session)
    broken_streams = {b.stream for b in broken}
    for stream, (seq, head) in heads.items():
        if stream in broken_streams or seq == 0:
            continue
        at = last.get(stream)
        if at is None or (at[0], at[1]) != (seq, head):
            end = at[0] if at else 0
            broken.append(BrokenLink(stream, end + 1, at[2] if at else 0,
                                     f"chain ends at #{end} but the head says #{seq} "
                                     "(events were removed from the end)"))
            broken_streams.add(stream)
    for stream, pin in sorted(pins.items()):
        if stream in broken_streams:
            continue
        at = last.get(stream)
        if at is None or at[0] < pin.seq:
            end = at[0] if at else 0
            broken.append(BrokenLink(stream, end + 1, at[2] if at else 0,
                                     f"chain ends at #{end} but {pin.named()} pinned #{pin.seq} "
                                     "(events were removed from the end)"))
    return VerifyReport(streams=len(heads), events=events, broken=broken, keyed=key is not None,
                        plain_events=plain_events, anchors=found, anchor_problems=anchor_problems)
