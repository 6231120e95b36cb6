"""The notification outbox (``engine.notify``): SLA milestones write ``bpm_notification``
rows inside the instance transaction; a notifier delivers them after commit on pluggable
channels (log, e-mail), records failures and retries. Deliverers claim rows with a lease
and send with no transaction open, so a slow mail server holds up nobody else.

The e-mail channel talks SMTP to a tiny fake server started here on 127.0.0.1 (the mail
server is outside the product); a slow server is a fake channel that waits for the test to
let each send finish. The database is the real one.
"""

from __future__ import annotations

import email
import email.policy
import logging
import queue
import socket
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import select, update

from engine.bootstrap import build_runtime
from engine.calendars import SHANGHAI
from engine.config import Settings
from engine.models import Notification, Timer, User
from engine.process import instances
from engine.sla import admin as sla_admin
from engine.timers import firing
from engine.timers.notify import LEASE, MAX_ATTEMPTS, EmailChannel, LogChannel, Notifier

MONDAY_9 = datetime(2026, 3, 2, 9, tzinfo=SHANGHAI)
HALF_WAY = datetime(2026, 3, 3, 9, 0, 1, tzinfo=SHANGHAI)  # just past 1 of 2 working days
POLICY = {"key": "review.register", "name": "登记 2 个工作日", "position": 10, "process_key": "review",
          "element_id": "register", "target_amount": 2, "target_unit": "WD",
          "milestones": [{"at": 0.5, "action": "notify", "to": "candidates"}]}
SUBJECT = "[R-1] 登记：已用时 50%"


@pytest.fixture
def half_way(db, rt, people, review) -> Iterator[time_machine.Coordinates]:
    """A register task of R-1 (candidates: the clerks li and zhao) under a policy that
    notifies the candidates half-way; the clock stands just past that milestone."""
    with db.transaction() as s:
        sla_admin.upsert_policy(s, rt, data=POLICY, actor=people.owner)
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        with db.transaction() as s:
            instances.start(s, rt, process_key="review", business_key="R-1", actor=people.clerk,
                            data={"priority": 50, "due_at": None})
        clock.move_to(HALF_WAY)
        yield clock


def outbox(db) -> list[Notification]:
    with db.transaction() as s:
        return list(s.execute(select(Notification).order_by(Notification.recipient)).scalars())


def set_email(db, username, address):
    """``identity.create_user`` takes no e-mail address: set it in the database."""
    with db.transaction() as s:
        s.execute(update(User).where(User.username == username).values(email=address))


def notify_records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bpm.notify"]


# -- the outbox -----------------------------------------------------------------------------
@pytest.mark.sqlite
def test_a_reminder_speaks_the_recipients_language_in_beijing_time(db, rt, half_way):
    """li reads Chinese (the default), zhao chose English: each gets the reminder in one
    language, with the due date in Beijing time (09:00, not 01:00+00:00)."""
    with db.transaction() as s:
        s.execute(update(User).where(User.username == "zhao").values(locale="en"))
    assert firing.fire_due(db, rt) == 1
    li, zhao = outbox(db)
    assert (li.subject, li.body) == (SUBJECT, "任务「登记」（R-1）截止时间 2026-03-04 09:00（北京时间）；已用时 50%。")
    assert (zhao.subject, zhao.body) == (
        "[R-1] 登记: 50% of the time allowed used",
        "Task 登记 (R-1) is due 2026-03-04 09:00 Beijing time; 50% of the time allowed used.")


@pytest.mark.sqlite
def test_milestone_notifications_are_rows_until_the_notifier_delivers_them(db, rt, half_way, caplog):
    caplog.set_level(logging.INFO, logger="bpm.notify")
    assert firing.fire_due(db, rt) == 1
    rows = outbox(db)
    assert [(n.recipient, n.subject, n.sent_at, n.attempts) for n in rows] == [
        ("li", SUBJECT, None, 0), ("zhao", SUBJECT, None, 0)]
    assert all(n.task_id is not None and n.instance_id is not None for n in rows)
    assert "R-1" in rows[0].body and "已用时 50%" in rows[0].body
    assert notify_records(caplog) == []  # firing wrote rows; nobody has been told yet

    assert Notifier({"log": LogChannel()}).deliver_pending(db, rt) == 2
    assert notify_records(caplog) == [f"notify li: {SUBJECT} — {rows[0].body}",
                                      f"notify zhao: {SUBJECT} — {rows[1].body}"]
    assert [(n.sent_at, n.attempts, n.last_error) for n in outbox(db)] == [(HALF_WAY, 0, None)] * 2

    assert Notifier({"log": LogChannel()}).deliver_pending(db, rt) == 0  # sent once, never again
    assert len(notify_records(caplog)) == 2


@pytest.mark.sqlite
def test_a_rolled_back_firing_notifies_no_one_and_the_milestone_fires_later(db, rt, half_way, caplog):
    caplog.set_level(logging.INFO, logger="bpm.notify")
    with db.transaction() as s:
        timer_id = s.execute(select(Timer.id).where(Timer.kind == "sla", Timer.status == "waiting")
                             .order_by(Timer.due_at)).scalars().first()
    with pytest.raises(RuntimeError), db.transaction() as s:
        assert firing.fire(s, rt, timer_id) is True
        s.flush()
        assert len(s.execute(select(Notification)).scalars().all()) == 2  # written in the transaction
        raise RuntimeError("the instance transaction fails after the milestone")
    assert outbox(db) == []
    assert Notifier({"log": LogChannel()}).deliver_pending(db, rt) == 0
    assert notify_records(caplog) == []
    with db.transaction() as s:
        assert s.get(Timer, timer_id).status == "waiting"  # the claim rolled back too

    assert firing.fire_due(db, rt) == 1
    assert Notifier({"log": LogChannel()}).deliver_pending(db, rt) == 2
    assert len(notify_records(caplog)) == 2


def test_rows_of_an_uncommitted_transaction_are_not_delivered(db, rt, half_way, caplog):
    """PostgreSQL only: SQLite allows a single writer, so the notifier could not even start."""
    caplog.set_level(logging.INFO, logger="bpm.notify")
    notifier = Notifier({"log": LogChannel()})
    with db.transaction() as s:
        timer_id = s.execute(select(Timer.id).where(Timer.kind == "sla").order_by(Timer.due_at)).scalars().first()
    with db.transaction() as s:
        assert firing.fire(s, rt, timer_id) is True
        s.flush()
        assert notifier.deliver_pending(db, rt) == 0  # another connection: nothing committed yet
    assert notify_records(caplog) == []
    assert notifier.deliver_pending(db, rt) == 2


# -- failures and retries -------------------------------------------------------------------
def _closed_port() -> int:
    """A local port with nothing listening: connecting is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.sqlite
def test_a_failing_channel_records_attempts_and_error_and_leaves_the_row_for_retry(db, rt, half_way):
    set_email(db, "li", "li@example.com")
    assert firing.fire_due(db, rt) == 1
    down = Notifier({"email": EmailChannel(f"smtp://127.0.0.1:{_closed_port()}")})
    assert down.deliver_pending(db, rt) == 0
    li, zhao = outbox(db)
    assert (li.sent_at, li.attempts) == (None, 1) and li.last_error.startswith("ConnectionRefusedError")
    assert (zhao.sent_at, zhao.attempts, zhao.last_error) == (None, 1, "ValueError: user zhao has no e-mail address")

    assert down.deliver_pending(db, rt) == 0
    assert [n.attempts for n in outbox(db)] == [2, 2]  # retried, still unsent

    # A channel that works again (here: a log) delivers what is still pending.
    assert Notifier({"log": LogChannel()}).deliver_pending(db, rt) == 2
    assert [(n.sent_at, n.attempts) for n in outbox(db)] == [(HALF_WAY, 2), (HALF_WAY, 2)]


@pytest.mark.sqlite
def test_a_row_that_keeps_failing_is_given_up_after_max_attempts(db, rt, half_way):
    assert firing.fire_due(db, rt) == 1
    no_address = Notifier({"email": EmailChannel(f"smtp://127.0.0.1:{_closed_port()}")})
    for _ in range(MAX_ATTEMPTS + 3):
        assert no_address.deliver_pending(db, rt) == 0
    assert [(n.attempts, n.sent_at) for n in outbox(db)] == [(MAX_ATTEMPTS, None)] * 2
    assert Notifier({"log": LogChannel()}).deliver_pending(db, rt) == 0  # left for an administrator


@pytest.mark.sqlite
def test_channels_are_pluggable(db, rt, half_way):
    @dataclass
    class Pager:  # e.g. SMS later: anything with send(recipient=, subject=, body=)
        sent: list[tuple[str, str]] = field(default_factory=list)

        def send(self, *, recipient: User, subject: str, body: str) -> None:
            self.sent.append((recipient.username, subject))

    pager = Pager()
    assert firing.fire_due(db, rt) == 1
    assert Notifier({"log": LogChannel(), "pager": pager}).deliver_pending(db, rt) == 2
    assert pager.sent == [("li", SUBJECT), ("zhao", SUBJECT)]


# -- claims: a slow channel, a deliverer that dies, deliverers racing -----------------------
class Recorder:
    """A channel that only remembers whom it told."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, *, recipient: User, subject: str, body: str) -> None:
        self.sent.append(recipient.username)


@pytest.mark.sqlite
def test_the_embedded_runner_fires_and_delivers_in_a_thread_of_its_own_until_stopped(db, rt, half_way):
    told = threading.Event()

    class Teller(Recorder):  # lets the test know once both clerks were told
        def send(self, *, recipient: User, subject: str, body: str) -> None:
            super().send(recipient=recipient, subject=subject, body=body)
            if len(self.sent) == 2:
                told.set()

    teller = Teller()
    firing.EmbeddedRunner(db, rt).stop()  # one never started: nothing to stop
    runner = firing.EmbeddedRunner(db, rt, max_sleep=3600.0, notifier=Notifier({"log": teller}))
    runner.start()
    assert told.wait(timeout=30)
    thread = runner._thread
    assert thread is not None and (thread.name, thread.daemon) == ("bpm-timers", True)
    runner.stop()  # wakes it from its sleep of up to an hour
    assert not thread.is_alive()
    assert teller.sent == ["li", "zhao"]
    assert [(n.recipient, n.sent_at) for n in outbox(db)] == [("li", HALF_WAY), ("zhao", HALF_WAY)]


class SlowServer:
    """A channel standing for a slow SMTP server: each send waits until the test lets it
    finish. ``sending.get()`` hands the test the recipient and the event that finishes it."""

    def __init__(self) -> None:
        self.sending: queue.Queue[tuple[str, threading.Event]] = queue.Queue()
        self.sent: list[str] = []

    def send(self, *, recipient: User, subject: str, body: str) -> None:
        done = threading.Event()
        self.sending.put((recipient.username, done))
        if not done.wait(timeout=30):
            raise TimeoutError("the test never let this send finish")
        self.sent.append(recipient.username)


class Deliverer(threading.Thread):
    """``deliver_pending`` in a thread of its own, as a second worker process would run it."""

    def __init__(self, notifier: Notifier, db, rt, **kwargs) -> None:
        super().__init__(daemon=True)
        self.notifier, self.db, self.rt, self.kwargs = notifier, db, rt, kwargs
        self.result: int | BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.notifier.deliver_pending(self.db, self.rt, **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.result = exc


@pytest.mark.sqlite
def test_a_second_deliverer_is_not_blocked_while_the_first_is_sending(db, rt, half_way):
    assert firing.fire_due(db, rt) == 1  # li and zhao
    slow, quick = SlowServer(), Recorder()
    first = Deliverer(Notifier({"email": slow}), db, rt, limit=1)
    first.start()
    (recipient, finish) = slow.sending.get(timeout=30)
    try:
        assert recipient == "li"
        # Mid-send, the first deliverer holds no connection: no transaction, no lock.
        assert db.engine.pool.checkedout() == 0
        li, zhao = outbox(db)
        assert (li.sent_at, zhao.claimed_by) == (None, None) and li.claimed_by is not None  # li is "sending"
        # The second deliverer runs to the end and sends what the first did not claim.
        assert Notifier({"log": quick}).deliver_pending(db, rt) == 1
        assert quick.sent == ["zhao"]
    finally:
        finish.set()
        first.join(timeout=30)
    assert first.result == 1 and slow.sent == ["li"]
    assert [(n.recipient, n.sent_at, n.claimed_by) for n in outbox(db)] == [("li", HALF_WAY, None),
                                                                          ("zhao", HALF_WAY, None)]


class Crash(BaseException):
    """The deliverer's process dies mid-send: nothing it could catch and record."""


class DyingServer:
    def send(self, *, recipient: User, subject: str, body: str) -> None:
        raise Crash


@pytest.mark.sqlite
def test_rows_claimed_by_a_deliverer_that_died_are_sent_after_the_lease(db, rt, half_way):
    assert firing.fire_due(db, rt) == 1
    with pytest.raises(Crash):
        Notifier({"email": DyingServer()}).deliver_pending(db, rt)
    assert [(n.sent_at, n.attempts, n.claimed_at) for n in outbox(db)] == [(None, 0, HALF_WAY)] * 2

    survivor = Recorder()
    assert Notifier({"log": survivor}).deliver_pending(db, rt) == 0  # claimed: perhaps still being sent
    half_way.move_to(HALF_WAY + LEASE - timedelta(seconds=1))
    assert Notifier({"log": survivor}).deliver_pending(db, rt) == 0
    half_way.move_to(HALF_WAY + LEASE)
    assert Notifier({"log": survivor}).deliver_pending(db, rt) == 2
    assert survivor.sent == ["li", "zhao"]
    assert [(n.sent_at, n.attempts, n.claimed_by) for n in outbox(db)] == [(HALF_WAY + LEASE, 0, None)] * 2


@pytest.mark.sqlite
def test_a_batch_slower_than_the_lease_keeps_its_unsent_rows(db, rt, half_way):
    """Each row's lease is renewed just before it is sent, so a batch whose sends add up to
    more than the lease does not hand its tail to another deliverer mid-way."""
    assert firing.fire_due(db, rt) == 1
    slow, other = SlowServer(), Recorder()
    first = Deliverer(Notifier({"email": slow}), db, rt)  # claims li and zhao at HALF_WAY
    first.start()
    try:
        (recipient, finish) = slow.sending.get(timeout=30)
        assert recipient == "li"
        half_way.move_to(HALF_WAY + LEASE * 0.75)
        finish.set()
        (recipient, finish) = slow.sending.get(timeout=30)  # zhao's lease renewed at 0.75
        assert recipient == "zhao"
        half_way.move_to(HALF_WAY + LEASE * 1.5)  # the batch's claim is older than the lease
        assert Notifier({"log": other}).deliver_pending(db, rt) == 0
    finally:
        finish.set()
        first.join(timeout=30)
    assert first.result == 2 and slow.sent == ["li", "zhao"] and other.sent == []
    assert [n.sent_at for n in outbox(db)] == [HALF_WAY + LEASE * 0.75, HALF_WAY + LEASE * 1.5]


def test_two_concurrent_deliverers_never_send_a_row_twice(db, rt, people):
    """PostgreSQL: both deliverers hold a claimed batch at the same moment (each one's first
    send waits for the other's), and every row is sent exactly once."""
    now = datetime(2026, 3, 2, 1, tzinfo=UTC)
    with db.transaction() as s:
        s.add_all(Notification(channel="default", recipient=("li", "zhao")[i % 2], subject=f"n{i}", body="",
                               created_at=now, attempts=0) for i in range(40))
    meeting = threading.Barrier(2, timeout=30)
    sent: list[tuple[str, str]] = []

    class Meeting:
        def __init__(self, name: str) -> None:
            self.name, self.first = name, True

        def send(self, *, recipient: User, subject: str, body: str) -> None:
            if self.first:
                self.first = False
                meeting.wait()
            sent.append((self.name, subject))

    def drain(name: str) -> None:
        channel = Meeting(name)
        while Notifier({"meeting": channel}).deliver_pending(db, rt, limit=5):
            pass

    threads = [threading.Thread(target=drain, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(subject for _, subject in sent) == sorted(f"n{i}" for i in range(40))
    assert {name for name, _ in sent} == {"a", "b"}
    assert all(n.sent_at is not None and n.claimed_by is None for n in outbox(db))


# -- e-mail over SMTP -----------------------------------------------------------------------
@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]


class _SmtpSession(socketserver.StreamRequestHandler):
    """Just enough SMTP (RFC 5321) for smtplib: greeting, EHLO, MAIL, RCPT, DATA, QUIT."""

    def reply(self, text: str) -> None:
        self.wfile.write(text.encode("ascii") + b"\r\n")

    def handle(self) -> None:
        self.reply("220 fake-smtp ESMTP ready")
        sender, recipients = "", []
        while line := self.rfile.readline():
            verb, _, argument = line.decode("utf-8").rstrip("\r\n").partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                self.reply("250-fake-smtp")
                self.reply("250 8BITMIME")
            elif verb == "MAIL":
                sender, recipients = argument.split(":", 1)[1].split()[0].strip("<>"), []
                self.reply("250 OK")
            elif verb == "RCPT":
                recipients.append(argument.split(":", 1)[1].split()[0].strip("<>"))
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                while (data := self.rfile.readline()) not in (b".\r\n", b""):
                    lines.append(data[1:] if data.startswith(b"..") else data)
                self.server.received.append(Received(sender, recipients, b"".join(lines)))  # type: ignore[attr-defined]
                self.reply("250 OK: queued")
            elif verb == "QUIT":
                self.reply("221 Bye")
                return
            else:  # HELO, RSET, NOOP
                self.reply("250 OK")


class _SmtpServer(socketserver.ThreadingTCPServer):
    daemon_threads = False  # server_close() waits for the sessions: no socket is left open
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _SmtpSession)
        self.received: list[Received] = []


@pytest.fixture
def smtp_server() -> Iterator[_SmtpServer]:
    server = _SmtpServer()
    thread = threading.Thread(target=server.serve_forever, name="fake-smtp", daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.mark.sqlite
def test_the_email_channel_sends_the_milestone_to_a_users_address(db, half_way, smtp_server, database_url):
    port = smtp_server.server_address[1]
    rt = build_runtime(Settings.from_env({"BPM_DATABASE_URL": database_url, "BPM_SMTP_URL": f"smtp://127.0.0.1:{port}"}))
    notifier = Notifier.from_settings(rt)
    assert sorted(notifier.channels) == ["email", "log"]
    set_email(db, "li", "li@example.com")
    assert firing.fire_due(db, rt) == 1

    assert notifier.deliver_pending(db, rt) == 1  # li; zhao has no address
    (mail,) = smtp_server.received
    assert (mail.sender, mail.recipients) == ("bpm@localhost", ["li@example.com"])
    message = mail.message
    assert (message["From"], message["To"], message["Subject"]) == ("bpm@localhost", "li@example.com", SUBJECT)
    li, zhao = outbox(db)
    assert message.get_content().strip() == li.body
    assert li.sent_at == HALF_WAY and li.last_error is None
    assert (zhao.sent_at, zhao.attempts, zhao.last_error) == (None, 1, "ValueError: user zhao has no e-mail address")

    set_email(db, "zhao", "zhao@example.com")  # the administrator fills in the address
    assert notifier.deliver_pending(db, rt) == 1
    assert [m.recipients for m in smtp_server.received] == [["li@example.com"], ["zhao@example.com"]]
    assert all(n.sent_at is not None for n in outbox(db))
