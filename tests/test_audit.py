"""The hash-chained audit trail: clean after real work, and tampering is found and located."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import delete, select, text, update

from engine import audit
from engine.access.identity import Actor
from engine.models import AuditEvent, Task
from engine.process import instances, messages, passage, tasks

pytestmark = pytest.mark.sqlite



def _complete_open(db, rt, actor, instance_id, data):
    with db.transaction() as s:
        task = s.execute(select(Task).where(Task.instance_id == instance_id, Task.status == "open")).scalar_one()
        tasks.complete(s, rt, task_id=task.id, actor=actor, data=data)


@pytest.fixture
def finished(db, rt, people, review):
    """Two review instances: R-1 run to the end (claims, completions, a message), R-2 started."""
    with db.transaction() as s:
        one = instances.start(s, rt, process_key="review", business_key="R-1", actor=people.clerk,
                              data={"priority": 50, "due_at": None}).id
        two = instances.start(s, rt, process_key="review", business_key="R-2", actor=people.clerk,
                              data={"priority": 50, "due_at": None}).id
    with db.transaction() as s:
        register = s.execute(select(Task).where(Task.instance_id == one)).scalar_one()
        tasks.claim(s, rt, task_id=register.id, actor=people.clerk)
    with db.transaction() as s:
        tasks.unclaim(s, rt, task_id=register.id, actor=people.clerk)
    _complete_open(db, rt, people.teammate, one, {"amount": 90000, "summary": "大额申请"})
    _complete_open(db, rt, people.manager, one, {"approved": True, "comment": "同意"})
    with db.transaction() as s:
        messages.correlate(s, rt, name="client_ack", correlation_key="R-1", actor=people.system,
                           payload={"channel": "app"})
    return one, two


def _verify(db):
    with db.transaction() as s:
        return audit.verify(s)


def _event(db, stream, seq):
    with db.transaction() as s:
        return s.execute(select(AuditEvent).where(AuditEvent.stream == stream, AuditEvent.seq == seq)).scalar_one()


def test_a_workflow_run_leaves_every_chain_intact(db, people, finished):
    one, two = finished
    report = _verify(db)
    assert report.broken == []
    with db.transaction() as s:
        every = [e.kind for e in instances.history(s, one, actor=Actor.system())]
        # The path the engine took is in the trail too (tests/brokerage/test_history.py): it
        # starts at the start event and ends at the end event, before the case completes.
        assert (every[1], every[-2:]) == ("event.start", ["event.end", "instance.completed"])
        kinds = [k for k in every if k not in passage.KINDS]
        assert kinds == ["instance.started", "task.claimed", "task.unclaimed", "task.claimed", "task.completed",
                         "task.claimed", "task.completed", "message.received", "instance.completed"]
        events = s.execute(select(AuditEvent).order_by(AuditEvent.stream, AuditEvent.seq)).scalars().all()
    streams = {e.stream for e in events}
    assert {f"instance:{one}", f"instance:{two}", "system"} <= streams
    assert (report.streams, report.events) == (len(streams), len(events))
    for stream in streams:  # each chain links to its predecessor from seq 1, empty hash first
        chain = [e for e in events if e.stream == stream]
        assert [e.seq for e in chain] == list(range(1, len(chain) + 1))
        assert chain[0].prev_hash == ""
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(chain))
    completed = [e for e in events if e.stream == f"instance:{one}" and e.kind == "task.completed"]
    assert [e.actor for e in completed] == ["zhao", "wang"]
    assert completed[0].data["data"] == {"amount": 90000, "summary": "大额申请"}


def test_changing_an_events_data_is_detected_and_located(db, people, finished):
    one, _ = finished
    stream = f"instance:{one}"
    with db.transaction() as s:
        seq = s.execute(select(AuditEvent.seq).where(AuditEvent.stream == stream, AuditEvent.kind == "task.completed")
                        .order_by(AuditEvent.seq)).scalars().first()
    target = _event(db, stream, seq)
    assert target.kind == "task.completed"
    with db.engine.begin() as conn:  # an UPDATE behind the engine's back: raise the amount
        conn.execute(update(AuditEvent.__table__).where(AuditEvent.__table__.c.id == target.id)
                     .values(data={**target.data, "data": {"amount": 9, "summary": "大额申请"}}))
    broken = _verify(db).broken
    assert [(b.stream, b.seq, b.event_id) for b in broken] == [(stream, seq, target.id)]
    assert "altered" in broken[0].reason
    assert broken[0].format().startswith(f"{stream} #{seq} ")


def test_changing_the_actor_with_raw_sql_is_detected(db, people, finished):
    _, two = finished
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE bpm_audit_event SET actor = 'boss' WHERE stream = :s AND seq = 1"),
                     {"s": f"instance:{two}"})
    assert [(b.stream, b.seq) for b in _verify(db).broken] == [(f"instance:{two}", 1)]


def test_recomputing_the_hash_after_a_change_breaks_the_next_link(db, people, finished):
    one, _ = finished
    stream = f"instance:{one}"
    target = _event(db, stream, 3)
    with db.engine.begin() as conn:  # a forger who rewrites one event and its own hash
        conn.execute(text("UPDATE bpm_audit_event SET hash = :h WHERE id = :id"), {"h": "0" * 64, "id": target.id})
    broken = _verify(db).broken
    assert [(b.stream, b.seq) for b in broken] == [(stream, 3)]


def test_deleting_the_last_event_of_an_instance_stream_is_detected(db, people, finished):
    one, _ = finished
    stream = f"instance:{one}"
    with db.transaction() as s:
        last = s.execute(select(AuditEvent).where(AuditEvent.stream == stream)
                         .order_by(AuditEvent.seq.desc()).limit(1)).scalar_one()
        assert last.kind == "instance.completed"
        last_seq = last.seq
    with db.engine.begin() as conn:
        conn.execute(delete(AuditEvent.__table__).where(AuditEvent.__table__.c.id == last.id))
    broken = _verify(db).broken
    assert [b.stream for b in broken] == [stream]
    assert broken[0].seq == last_seq
    assert "removed from the end" in broken[0].reason


def test_deleting_an_event_in_the_middle_is_detected(db, people, finished):
    one, _ = finished
    stream = f"instance:{one}"
    with db.engine.begin() as conn:
        conn.execute(text("DELETE FROM bpm_audit_event WHERE stream = :s AND seq = 2"), {"s": stream})
    broken = _verify(db).broken
    assert [(b.stream, b.seq) for b in broken] == [(stream, 3)]
    assert "missing" in broken[0].reason


def test_tampering_with_the_system_stream_is_detected(db, people, finished):
    with db.transaction() as s:
        deployed = s.execute(select(AuditEvent).where(AuditEvent.kind == "process.deployed")).scalar_one()
    assert deployed.stream == "system"
    with db.engine.begin() as conn:  # pretend the deployment was a user change
        conn.execute(text("UPDATE bpm_audit_event SET kind = 'user.created' WHERE id = :id"), {"id": deployed.id})
    assert [(b.stream, b.seq) for b in _verify(db).broken] == [("system", deployed.seq)]


def test_event_data_is_stored_as_it_was_hashed_whether_it_is_plain_or_converted(db, rt):
    """Plain data (text, integers, booleans, null) is kept as given, other values as JSON gives
    them back; either way the stored event verifies, and a caller changing its dict afterwards
    changes neither what was hashed nor what is stored."""
    from datetime import UTC, datetime
    from decimal import Decimal

    at = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
    plain = {"who": "张三", "count": 3, "ok": True, "none": None}
    converted = {"at": at, "ratio": Decimal("1.5"), "nested": {"list": (1, 2)}, 7: "seven"}
    mixed = {"who": "张三", "at": at}  # one value JSON would change is enough to convert
    with db.transaction() as s:
        audit.record_system_event(s, kind="test.converted", actor="tester", at=at, data=converted)
        audit.record_system_event(s, kind="test.plain", actor="tester", at=at, data=plain)
        audit.record_system_event(s, kind="test.mixed", actor="tester", at=at, data=mixed)
        plain["who"] = "李四"  # after the append, before the flush: what was recorded stays
    with db.transaction() as s:
        stored = dict(s.execute(select(AuditEvent.kind, AuditEvent.data)
                                .where(AuditEvent.kind.in_(("test.plain", "test.converted", "test.mixed")))).all())
    assert stored["test.plain"] == {"who": "张三", "count": 3, "ok": True, "none": None}
    assert stored["test.converted"] == {"at": "2026-03-02 01:00:00+00:00", "ratio": "1.5",
                                        "nested": {"list": [1, 2]}, "7": "seven"}
    assert stored["test.mixed"] == {"who": "张三", "at": "2026-03-02 01:00:00+00:00"}
    assert _verify(db).ok


def test_the_hashed_text_of_an_event_is_fixed_so_chains_written_before_keep_verifying():
    """What is hashed: the previous hash, then the event as compact JSON with its data's keys
    sorted (PostgreSQL's JSONB hands them back in its own order) and text as it is. A change
    to any of it would report every event already written as altered."""
    from datetime import UTC, datetime

    message = audit._message("ab" * 32, stream="instance:7", seq=3, occurred_at=datetime(2026, 3, 2, 1, 0, tzinfo=UTC),
                             actor="张三", kind="task.completed", instance_id=7, task_uuid="u-1",
                             data={"b": 1, "a": "甲"})
    assert message == ("ab" * 32 + '|["instance:7",3,"2026-03-02T01:00:00.000000+00:00","张三","task.completed",'
                       '7,"u-1",{"a":"甲","b":1}]').encode()
