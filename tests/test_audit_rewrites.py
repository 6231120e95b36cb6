"""Rewriting the audit trail with nothing but the database (engine/audit.py): the chain is keyed
with a secret the database does not hold, and anchors written outside it pin every stream's
head. The drill: a forger who edits an event and recomputes the plain chain, and one who deletes
a stream's last events and moves its head back, are both reported by ``bpm audit verify``; so is
an edit of any hashed column. Events from before the key was set verify once something keyed
pins them."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from engine import audit
from engine.config import Settings
from engine.db import Database
from engine.errors import AuditAnchorInvalid, ConfigError
from engine.models import AuditEvent, AuditStream, ProcessInstance, Task
from engine.process import instances, passage, tasks
from tests.conftest import deploy_fixture
from tests.support.cli import AUDIT_KEY, bpm

pytestmark = pytest.mark.sqlite


@pytest.fixture
def case(db, rt, people) -> int:
    """A review case with a claim and a completion (task events), beside the system stream."""
    deploy_fixture(db, rt, "review", people.owner)
    with db.transaction() as s:
        instance_id = instances.start(s, rt, process_key="review", business_key="AU-1", actor=people.clerk,
                                      data={"priority": None, "due_at": None}).id
    with db.transaction() as s:
        task = s.execute(select(Task).where(Task.instance_id == instance_id)).scalar_one()
        tasks.claim(s, rt, task_id=task.id, actor=people.clerk)
        tasks.complete(s, rt, task_id=task.id, actor=people.clerk, data={"amount": 90000, "summary": "大额申请"})
    return instance_id


@pytest.fixture
def anchors(tmp_path) -> Path:
    directory = tmp_path / "anchors"
    directory.mkdir()
    return directory


def verify(database_url: str, anchors: Path | None = None, **env: str):
    """``bpm audit verify``: (exit code, BROKEN lines, the whole output)."""
    if anchors is not None:
        env["BPM_AUDIT_ANCHOR_DIR"] = str(anchors)
    result = bpm(database_url, "audit", "verify", **env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, [line for line in result.stdout.splitlines() if line.startswith("BROKEN")], result.output


def anchor(database_url: str, anchors: Path):
    result = bpm(database_url, "audit", "anchor", BPM_AUDIT_ANCHOR_DIR=str(anchors))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def events_of(db, stream: str) -> list[AuditEvent]:
    with db.transaction() as s:
        return list(s.execute(select(AuditEvent).where(AuditEvent.stream == stream).order_by(AuditEvent.seq)).scalars())


def set_head(conn, stream: str, seq: int, head: str) -> None:
    if stream.startswith("instance:"):
        table = ProcessInstance.__table__
        instance_id = int(stream.split(":")[1])
        conn.execute(update(table).where(table.c.id == instance_id).values(audit_seq=seq, audit_head=head))
    else:
        conn.execute(update(AuditStream.__table__).where(AuditStream.__table__.c.stream == stream)
                     .values(seq=seq, head=head))


def rewrite_plain(db, stream: str, seq: int, **changes) -> None:
    """The forger who holds the database: change event ``seq``, recompute the plain SHA-256
    chain from there to the end, and store the new head, as the chain was before the key."""
    table = AuditEvent.__table__
    with db.engine.begin() as conn:
        if changes:
            conn.execute(update(table).where(table.c.stream == stream, table.c.seq == seq).values(**changes))
    prev = ""
    chain = events_of(db, stream)
    with db.engine.begin() as conn:
        for event in chain:
            if event.seq >= seq:
                digest = hashlib.sha256(audit._event_message(event, prev)).hexdigest()
                conn.execute(update(table).where(table.c.id == event.id).values(prev_hash=prev, hash=digest))
                prev = digest
            else:
                prev = event.hash
        set_head(conn, stream, len(chain), prev)


def truncate(db, stream: str, count: int) -> None:
    """The forger who removes a stream's last ``count`` events and moves its head back."""
    chain = events_of(db, stream)
    kept = chain[:-count]
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM bpm_audit_event WHERE stream = :s AND seq > :n"),
                     {"s": stream, "n": len(kept)})
        set_head(conn, stream, len(kept), kept[-1].hash if kept else "")


# -- the key ------------------------------------------------------------------------------------
def test_each_event_is_an_hmac_under_the_key_not_a_plain_hash(db, case):
    secret = AUDIT_KEY.encode()
    chain_key = hmac.new(secret, b"bpm audit chain v1", hashlib.sha256).digest()
    events = events_of(db, f"instance:{case}")
    # Every event is checked, the path the engine took (passage.KINDS) as much as the steps.
    assert [e.kind for e in events if e.kind not in passage.KINDS] == \
        ["instance.started", "task.claimed", "task.completed"]
    prev = ""
    for event in events:
        message = audit._event_message(event, prev)
        assert event.hash == hmac.new(chain_key, message, hashlib.sha256).hexdigest()
        assert event.hash != hashlib.sha256(message).hexdigest()
        prev = event.hash
    with db.transaction() as s:
        assert audit.verify(s).broken == []


def test_the_secret_derives_one_key_per_purpose_and_an_id_that_does_not_reveal_it():
    # Built directly, not through the cached key_from: these are the derivations every chain
    # and anchor already written depends on, so none of them may change.
    secret = AUDIT_KEY.encode()
    key = audit.AuditKey(secret)

    def derive(purpose: bytes) -> bytes:
        return hmac.new(secret, purpose, hashlib.sha256).digest()

    assert key.mac(b"event") == hmac.new(derive(b"bpm audit chain v1"), b"event", hashlib.sha256).hexdigest()
    assert key.mac(b"event") == key.mac(b"event")  # the keyed state is copied, not consumed
    assert key.sign(b"anchor") == hmac.new(derive(b"bpm audit anchor v1"), b"anchor", hashlib.sha256).hexdigest()
    assert key.key_id == derive(b"bpm audit key id v1").hex()[:16]
    assert len(key.key_id) == 16 and key.key_id not in secret.hex()


def test_drill_an_edited_event_with_the_plain_chain_recomputed_is_reported(database_url, db, case):
    stream = f"instance:{case}"
    assert verify(database_url)[0] == 0
    completed = next(e for e in events_of(db, stream) if e.kind == "task.completed")
    rewrite_plain(db, stream, completed.seq, data={**completed.data, "data": {"amount": 9, "summary": "大额申请"}})

    code, broken, _ = verify(database_url)
    assert code == 1
    assert broken == [f"BROKEN {stream} #{completed.seq} (event {completed.id}): written without the audit key "
                      "after keyed events (the chain was rewritten)"]


def test_drill_a_whole_stream_recomputed_from_its_first_event_is_reported(database_url, db, case):
    # Nothing keyed is left in the stream to catch it: a plain chain that no anchor pins
    # cannot be told from a rewrite.
    stream = f"instance:{case}"
    first = events_of(db, stream)[0]
    rewrite_plain(db, stream, 1, actor="mallory")
    code, broken, _ = verify(database_url)
    assert code == 1
    assert broken == [f"BROKEN {stream} #1 (event {first.id}): written without the audit key and pinned by no later "
                      "keyed event nor any anchor: it cannot be told from a rewrite (events from before the key was "
                      "set are pinned by anchoring once: bpm audit anchor)"]


def test_drill_the_last_events_deleted_and_the_head_moved_back_are_reported_against_the_anchor(
        database_url, db, case, anchors):
    stream = f"instance:{case}"
    written = anchor(database_url, anchors)
    assert written.exit_code == 0 and written.stdout.startswith("anchor 1: "), written.output
    last_seq = len(events_of(db, stream))
    truncate(db, stream, 2)

    code, broken, _ = verify(database_url, anchors)
    assert code == 1
    [line] = broken
    assert line.startswith(f"BROKEN {stream} #{last_seq - 1} ")
    assert f"chain ends at #{last_seq - 2} but anchor 1 (" in line and f"pinned #{last_seq}" in line
    assert line.endswith("(events were removed from the end)")


def test_drill_a_system_stream_cut_back_is_reported_against_the_anchor(database_url, db, case, anchors, rt, people):
    from engine.access import identity

    anchor(database_url, anchors)
    with db.transaction() as s:
        identity.create_user(s, username="later", display_name="后来者", now=rt.now())
    anchor(database_url, anchors)  # anchor 2 pins the system stream's new head
    truncate(db, audit.SYSTEM_STREAM, 1)
    code, broken, _ = verify(database_url, anchors)
    assert code == 1 and len(broken) == 1 and "anchor 2 (" in broken[0] and broken[0].startswith("BROKEN system #")


def test_streams_cut_back_behind_their_head_or_their_anchor_are_each_reported_once(db, rt, case, anchors):
    with db.transaction() as s:
        audit.anchor(s, anchors, now=rt.now())
    stream = f"instance:{case}"
    events = events_of(db, stream)
    system = events_of(db, audit.SYSTEM_STREAM)
    assert len(system) >= 2
    with db.engine.begin() as conn:  # the case's head left as it was: the head and the anchor both tell
        conn.execute(text("DELETE FROM bpm_audit_event WHERE id = :id"), {"id": events[-1].id})
    truncate(db, audit.SYSTEM_STREAM, 1)  # the head moved back with it: only the anchor tells
    with db.transaction() as s:
        broken = audit.verify(s, anchors=anchors).broken
    assert [(b.stream, b.seq, b.event_id) for b in broken] == [
        (stream, events[-1].seq, events[-2].id), (audit.SYSTEM_STREAM, system[-1].seq, system[-2].id)]
    assert broken[0].reason == (f"chain ends at #{events[-2].seq} but the head says #{events[-1].seq} "
                                "(events were removed from the end)")


def test_a_stream_emptied_together_with_its_head_is_reported_against_its_anchor(db, rt, anchors):
    with db.transaction() as s:
        audit.record_system_event(s, kind="test.solo", actor="tester", at=rt.now(), stream="solo")
    with db.transaction() as s:
        audit.anchor(s, anchors, now=rt.now())
    truncate(db, "solo", 1)  # no event left, the head back at #0
    with db.transaction() as s:
        broken = audit.verify(s, anchors=anchors).broken
    assert [(b.stream, b.seq, b.event_id) for b in broken] == [("solo", 1, 0)]
    assert broken[0].reason.startswith("chain ends at #0 but anchor 1 (")
    assert broken[0].reason.endswith(" pinned #1 (events were removed from the end)")


def test_without_anchors_the_truncation_goes_unseen_and_verify_says_so(database_url, db, case):
    # What the key alone cannot show; the operator is told, on every run.
    truncate(db, f"instance:{case}", 2)
    code, broken, output = verify(database_url)
    assert (code, broken) == (0, [])
    assert "no anchors (BPM_AUDIT_ANCHOR_DIR is not set): events removed from the end of a stream together with " \
           "its head are not detected" in output


def test_the_embedded_default_without_a_key_keeps_a_plain_chain_that_a_forger_can_recompute(tmp_path, rt, people):
    # The documented limit of the unkeyed default (SQLite only): recomputing the plain chain
    # passes, and verify says the chain is unkeyed.
    url = f"sqlite:///{tmp_path / 'embedded.sqlite3'}"
    assert bpm(url, "db", "upgrade", BPM_AUDIT_KEY="").exit_code == 0
    assert bpm(url, "user", "create", "someone", BPM_AUDIT_KEY="").exit_code == 0
    db = Database(url)
    try:
        [event] = events_of(db, audit.SYSTEM_STREAM)
        assert event.hash == hashlib.sha256(audit._event_message(event, "")).hexdigest()
        rewrite_plain(db, audit.SYSTEM_STREAM, 1, actor="mallory")
    finally:
        db.dispose()
    code, broken, output = verify(url, BPM_AUDIT_KEY="")
    assert (code, broken) == (0, [])
    assert "unkeyed: BPM_AUDIT_KEY is not set, so the chains are plain SHA-256" in output


def test_an_event_whose_previous_hash_was_changed_is_reported_and_not_anchored(db, rt, case, anchors):
    # The event's own hash still matches its content: only the link to the one before breaks.
    stream = f"instance:{case}"
    target = events_of(db, stream)[2]
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE bpm_audit_event SET prev_hash = :h WHERE id = :id"), {"h": "0" * 64, "id": target.id})
    expected = [audit.BrokenLink(stream, target.seq, target.id, "previous-hash does not match the preceding event")]
    with db.transaction() as s:
        assert audit.verify(s).broken == expected
    with db.transaction() as s:
        report = audit.anchor(s, anchors, now=rt.now())
    assert report.broken == expected and report.file is not None
    assert stream not in json.loads(report.file.read_text(encoding="utf-8"))["heads"]


def test_a_stream_emptied_behind_its_head_is_reported_beside_an_altered_one(db, rt, case):
    # A stream of a single event, deleted with its head left at #1; an altered stream before it
    # in the report does not stop the check of the heads after it.
    with db.transaction() as s:
        audit.record_system_event(s, kind="test.solo", actor="tester", at=rt.now(), stream="solo")
    [solo] = events_of(db, "solo")
    stream = f"instance:{case}"
    first = events_of(db, stream)[0]
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE bpm_audit_event SET actor = 'mallory' WHERE id = :id"), {"id": first.id})
        conn.execute(text("DELETE FROM bpm_audit_event WHERE id = :id"), {"id": solo.id})
    with db.transaction() as s:
        broken = audit.verify(s).broken
    assert [(b.stream, b.seq, b.event_id) for b in broken] == [(stream, 1, first.id), ("solo", 1, 0)]
    assert broken[1].reason == "chain ends at #0 but the head says #1 (events were removed from the end)"


# -- every hashed column ------------------------------------------------------------------------
@pytest.mark.parametrize(("column", "value"), [
    ("occurred_at", "2001-01-01 00:00:00"),
    ("task_uuid", "00000000-0000-4000-8000-000000000000"),
    ("instance_id", 999999),
])
def test_editing_a_hashed_column_with_sql_is_reported(database_url, db, case, column, value):
    stream = f"instance:{case}"
    claimed = next(e for e in events_of(db, stream) if e.kind == "task.claimed")
    assert claimed.task_uuid is not None and claimed.instance_id == case
    with db.engine.begin() as conn:
        conn.execute(text(f"UPDATE bpm_audit_event SET {column} = :v WHERE id = :id"), {"v": value, "id": claimed.id})
    assert getattr(events_of(db, stream)[claimed.seq - 1], column) != getattr(claimed, column)
    code, broken, _ = verify(database_url)
    assert code == 1
    assert broken == [f"BROKEN {stream} #{claimed.seq} (event {claimed.id}): content does not match its hash "
                      "(the event was altered)"]


# -- anchors ------------------------------------------------------------------------------------
def test_an_anchor_pins_only_the_streams_that_moved_and_nothing_when_none_did(database_url, db, rt, people, case,
                                                                              anchors):
    first = anchor(database_url, anchors)
    assert first.exit_code == 0
    assert first.stdout.startswith("anchor 1: 2 stream head(s) pinned in ")  # the case and the system stream
    again = anchor(database_url, anchors)
    assert (again.exit_code, again.stdout.strip()) == (0, "no stream moved since anchor 1: nothing written")
    with db.transaction() as s:
        instances.cancel(s, rt, instance_id=case, actor=people.supervisor, reason="客户撤回")
    second = anchor(database_url, anchors)
    assert second.stdout.startswith("anchor 2: 1 stream head(s) pinned in ")
    [_, latest] = sorted(anchors.glob("audit-anchor-*.json"))
    document = json.loads(latest.read_text(encoding="utf-8"))
    stream = f"instance:{case}"
    last = events_of(db, stream)[-1]
    assert document["heads"] == {stream: [last.seq, last.hash]}
    assert document["number"] == 2 and document["previous"] == json.loads(
        sorted(anchors.glob("audit-anchor-*.json"))[0].read_text(encoding="utf-8"))["signature"]
    code, broken, output = verify(database_url, anchors)
    assert (code, broken) == (0, []) and "2 anchor(s), the newest 2 of " in output


def test_an_anchor_refuses_to_pin_a_stream_whose_new_events_do_not_verify(database_url, db, case, anchors):
    stream = f"instance:{case}"
    rewrite_plain(db, stream, 2, actor="mallory")
    result = anchor(database_url, anchors)
    assert result.exit_code == 1
    assert [line for line in result.stdout.splitlines() if line.startswith("BROKEN")] == [
        f"BROKEN {stream} #2 (event {events_of(db, stream)[1].id}): content does not match its hash "
        "(the event was altered)"]
    [written] = anchors.glob("audit-anchor-*.json")
    assert list(json.loads(written.read_text(encoding="utf-8"))["heads"]) == [audit.SYSTEM_STREAM]


def test_an_anchor_checks_the_streams_in_batches_and_pins_every_one(db, rt, anchors):
    # More streams than one query takes (200): each checked once, none left out.
    names = [f"batch:{i:03d}" for i in range(201)]
    with db.transaction() as s:
        for name in names:
            audit.record_system_event(s, kind="test.batch", actor="tester", at=rt.now(), stream=name)
    with db.transaction() as s:
        report = audit.anchor(s, anchors, now=rt.now())
    assert report.broken == [] and report.file is not None
    heads = json.loads(report.file.read_text(encoding="utf-8"))["heads"]
    assert set(names) <= set(heads) and report.streams == len(heads)
    with db.transaction() as s:
        assert audit.verify(s, anchors=anchors).ok


def test_an_anchor_of_another_format_is_not_an_anchor(db, rt, case, anchors):
    with db.transaction() as s:
        written = audit.anchor(s, anchors, now=rt.now()).file
    assert written is not None
    document = json.loads(written.read_text(encoding="utf-8"))
    written.write_text(json.dumps({**document, "format": "bpm-audit-anchor/2"}), encoding="utf-8")
    with db.transaction() as s:
        report = audit.verify(s, anchors=anchors)
    assert report.anchor_problems == [f"{written.name}: not an anchor: format 'bpm-audit-anchor/2', "
                                      "expected 'bpm-audit-anchor/1'"]


def test_an_edited_a_forged_or_a_missing_anchor_is_reported(database_url, db, rt, people, case, anchors):
    from engine.access import identity

    anchor(database_url, anchors)
    with db.transaction() as s:
        identity.create_user(s, username="later", display_name="后来者", now=rt.now())
    anchor(database_url, anchors)
    first, second = sorted(anchors.glob("audit-anchor-*.json"))

    document = json.loads(second.read_text(encoding="utf-8"))
    second.write_text(json.dumps({**document, "heads": {audit.SYSTEM_STREAM: [1, "0" * 64]}}), encoding="utf-8")
    code, broken, _ = verify(database_url, anchors)
    assert code == 1 and broken == [f"BROKEN anchor {second.name}: the signature does not match "
                                    "(the file was altered or forged)"]

    other = Settings.from_env({"BPM_AUDIT_KEY": "another-key-0123456789abcdef-0123456789"}).audit_key
    assert other is not None
    forged = audit.key_from(other)
    body = {k: v for k, v in document.items() if k != "signature"}
    second.write_text(json.dumps({**body, "key_id": forged.key_id,
                                  "signature": forged.sign(audit._canonical({**body, "key_id": forged.key_id}))}),
                      encoding="utf-8")
    code, broken, _ = verify(database_url, anchors)
    assert code == 1 and len(broken) == 1 and "signed with another key" in broken[0]

    second.unlink()
    first.rename(anchors / "kept.json")  # no anchor file left: anchor 2 alone would not follow anything
    second.write_text(json.dumps(document), encoding="utf-8")
    code, broken, _ = verify(database_url, anchors)
    assert code == 1 and broken == [f"BROKEN anchor {second.name}: anchor 2 does not follow no anchor: "
                                    "an anchor is missing or was replaced"]


def test_anchoring_on_top_of_a_bad_anchor_is_refused(db, case, anchors, rt):
    (anchors / "audit-anchor-000001-20260101T000000Z.json").write_text("{}", encoding="utf-8")
    with db.transaction() as s, pytest.raises(AuditAnchorInvalid) as refused:
        audit.anchor(s, anchors, now=rt.now())
    assert refused.value.problems == ["audit-anchor-000001-20260101T000000Z.json: not an anchor: 'signature'"]


def test_an_anchor_directory_that_is_not_there_is_an_error_not_a_new_directory(database_url, db, case, tmp_path):
    missing = tmp_path / "not-mounted"
    for command in ("anchor", "verify"):
        result = bpm(database_url, "audit", command, BPM_AUDIT_ANCHOR_DIR=str(missing))
        assert isinstance(result.exception, ConfigError) and not missing.exists()
        assert str(result.exception) == f"BPM_AUDIT_ANCHOR_DIR {str(missing)!r} is not a directory"


def test_anchoring_or_verifying_against_anchors_without_the_key_is_refused(database_url, db, rt, anchors):
    # The command line refuses the anchor directory without the key already (Settings); the
    # engine refuses it too, for any other caller.
    unkeyed = Database(database_url)
    try:
        with unkeyed.transaction() as s, pytest.raises(ConfigError) as refused:
            audit.verify(s, anchors=anchors)
        assert str(refused.value) == "BPM_AUDIT_ANCHOR_DIR needs BPM_AUDIT_KEY: the anchors are signed with it"
        with unkeyed.transaction() as s, pytest.raises(ConfigError) as refused:
            audit.anchor(s, anchors, now=rt.now())
        assert str(refused.value) == "BPM_AUDIT_KEY is not set: anchors are signed with the audit key"
    finally:
        unkeyed.dispose()
    assert list(anchors.iterdir()) == []


# -- events from before the key -----------------------------------------------------------------
def test_events_from_before_the_key_verify_once_pinned_by_a_keyed_event_or_the_first_anchor(
        database_url, db, rt, people, case, anchors):
    # A database written before the key was set: every chain plain (as the old code wrote it).
    stream = f"instance:{case}"
    rewrite_plain(db, stream, 1)
    rewrite_plain(db, audit.SYSTEM_STREAM, 1)
    plain = len(events_of(db, stream)) + len(events_of(db, audit.SYSTEM_STREAM))
    code, broken, _ = verify(database_url)
    assert code == 1 and {line.split()[1] for line in broken} == {stream, audit.SYSTEM_STREAM}

    # The case goes on under the key: its next (keyed) event pins every plain one before it.
    with db.transaction() as s:
        instances.cancel(s, rt, instance_id=case, actor=people.supervisor, reason="客户撤回")
    code, broken, _ = verify(database_url)
    assert code == 1 and [line.split()[1] for line in broken] == [audit.SYSTEM_STREAM]

    # The migration point: the first anchor pins the rest as it is.
    assert anchor(database_url, anchors).exit_code == 0
    code, broken, output = verify(database_url, anchors)
    assert (code, broken) == (0, [])
    assert "event(s) written before the audit key, pinned by later events or anchors" in output
    with db.transaction() as s:
        assert audit.verify(s, anchors=anchors).plain_events == plain  # every one of them, once

    # From then on a rewrite of those plain events is caught by the anchor.
    rewrite_plain(db, audit.SYSTEM_STREAM, 1, actor="mallory")
    code, broken, _ = verify(database_url, anchors)
    assert code == 1 and len(broken) == 1 and broken[0].startswith(f"BROKEN {audit.SYSTEM_STREAM} #")
    assert "differs from anchor 1 (" in broken[0]


# -- configuration ------------------------------------------------------------------------------
def test_production_writes_no_event_without_the_key(database_url, backend, db, rt, people):
    from engine.access import identity

    before = events_of(db, audit.SYSTEM_STREAM)
    unkeyed = Database(database_url)
    try:
        if backend == "postgresql":
            with pytest.raises(ConfigError, match="BPM_AUDIT_KEY is not set"), unkeyed.transaction() as s:
                identity.create_user(s, username="nokey", display_name="无钥", now=rt.now())
            assert len(events_of(db, audit.SYSTEM_STREAM)) == len(before)
        else:  # the embedded default: a plain chain
            with unkeyed.transaction() as s:
                identity.create_user(s, username="nokey", display_name="无钥", now=rt.now())
            event = events_of(db, audit.SYSTEM_STREAM)[-1]
            assert event.seq == len(before) + 1
            assert event.hash == hashlib.sha256(audit._event_message(event, before[-1].hash)).hexdigest()
    finally:
        unkeyed.dispose()


def test_the_key_is_read_from_its_variable_or_the_file_it_names_and_must_be_long_enough(tmp_path):
    key_file = tmp_path / "audit.key"
    key_file.write_text(f"{AUDIT_KEY}\n", encoding="utf-8")
    assert Settings.from_env({"BPM_AUDIT_KEY": AUDIT_KEY}).audit_key == AUDIT_KEY.encode()
    assert Settings.from_env({"BPM_AUDIT_KEY_FILE": str(key_file)}).audit_key == AUDIT_KEY.encode()
    assert Settings.from_env({}).audit_key is None  # the embedded default: unkeyed
    assert AUDIT_KEY not in repr(Settings.from_env({"BPM_AUDIT_KEY": AUDIT_KEY}))
    refused = {
        "BPM_AUDIT_KEY must hold a key of at least 32 characters, got 5": {"BPM_AUDIT_KEY": "short"},
        "BPM_AUDIT_KEY and BPM_AUDIT_KEY_FILE are both set: set one": {
            "BPM_AUDIT_KEY": AUDIT_KEY, "BPM_AUDIT_KEY_FILE": str(key_file)},
        "BPM_AUDIT_ANCHOR_DIR needs BPM_AUDIT_KEY or BPM_AUDIT_KEY_FILE: the anchors are signed with it": {
            "BPM_AUDIT_ANCHOR_DIR": str(tmp_path)},
    }
    for message, env in refused.items():
        with pytest.raises(ConfigError) as error:
            Settings.from_env(env)
        assert error.value.message == message
    with pytest.raises(ConfigError, match=r"^BPM_AUDIT_KEY_FILE cannot be read: "):
        Settings.from_env({"BPM_AUDIT_KEY_FILE": str(tmp_path / "missing.key")})
    key_file.write_text("too short\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^BPM_AUDIT_KEY_FILE \(.*audit.key\) must hold a key of at least 32"):
        Settings.from_env({"BPM_AUDIT_KEY_FILE": str(key_file)})


def test_on_postgresql_the_server_the_worker_and_verify_refuse_to_run_without_the_key(database_url, backend, db,
                                                                                     monkeypatch, capsys):
    from api import create_app
    from tests.support.cli import run_entry_point

    settings = Settings.from_env({"BPM_DATABASE_URL": database_url})
    if backend == "sqlite":  # the embedded default serves unkeyed
        assert create_app(settings, record_policy=True) is not None
        return
    with pytest.raises(ConfigError, match=r"^BPM_AUDIT_KEY \(or BPM_AUDIT_KEY_FILE\) must be set with a PostgreSQL"):
        create_app(settings, record_policy=True)
    # A secret key is given so that the audit key is the one thing missing.
    code, _, err = run_entry_point(monkeypatch, capsys, "worker", "--burst", BPM_DATABASE_URL=database_url,
                                   BPM_REDIS_URL="redis://127.0.0.1:1/0", BPM_AUDIT_KEY="",
                                   BPM_SECRET_KEY="a-secret-key-long-enough-for-production")
    assert code == 1 and err.startswith("error: BPM_AUDIT_KEY (or BPM_AUDIT_KEY_FILE) must be set")
    code, _, err = run_entry_point(monkeypatch, capsys, "audit", "verify", BPM_DATABASE_URL=database_url,
                                   BPM_AUDIT_KEY="")
    assert code == 1 and err.startswith("error: BPM_AUDIT_KEY is not set: a PostgreSQL database's audit trail")
