"""Delivering the notification outbox after commit.

SLA milestones write ``bpm_notification`` rows inside the instance transaction; a notifier
sends them afterwards, so a rolled-back change never notifies anyone and a crashed sender
loses nothing (rows stay unsent and are retried). Channels are pluggable: ``log`` (the
default) and ``email`` (SMTP, when ``BPM_SMTP_URL`` is set) for staff. Rows on the ``sms``
channel are texts to clients (a complaint's client the call centre could not reach): their
recipient is ``client:<id>`` (the phone is read from the registry as the row is sent, so it is
never copied into the outbox) or ``phone:<number>`` (a walk-in complainant), and they go
through an :class:`SmsGateway`; every log line shows the number masked.

No transaction is open while a channel talks to the outside: an SMTP server may take its
whole timeout per message, and a transaction held that long would keep its row locks (on
SQLite, the database's only write lock) from every other deliverer and every instance
change. A deliverer instead

1. claims a batch in one short transaction: ``claimed_by``/``claimed_at`` set on unsent
   rows nobody holds, read ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so two deliverers
   claim different rows without waiting for each other;
2. sends each row with no transaction open;
3. records each outcome (sent, or the error and one more attempt) in a short transaction
   that also renews the lease on the next row of its batch.

A claim is a lease (:data:`LEASE`): rows claimed by a deliverer that died are taken again
once it has run out. The renewal before each send keeps a slow batch's unsent tail from
passing to a second deliverer while the first is still working through it, and every
write is conditional on the claim, so a deliverer that lost a row leaves it to its new
owner. Two deliverers therefore never send one row twice unless a single send outlasts the
lease.
"""

from __future__ import annotations

import logging
import os
import smtplib
import socket
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from typing import Protocol
from urllib.parse import urlparse
from uuid import uuid4

from sqlalchemy import ColumnElement, and_, or_, select, update

from engine.access.masking import mask_phone
from engine.db import Database, rowcount
from engine.models import Client, Notification, User
from engine.process.runtime import Runtime

log = logging.getLogger("bpm.notify")
MAX_ATTEMPTS = 5
# Far above the worst case of one send (the SMTP timeout, 10 s, on each channel), so a live
# deliverer never loses a row; short enough that a dead one's rows wait minutes, not hours.
LEASE = timedelta(minutes=2)


class Channel(Protocol):
    def send(self, *, recipient: User, subject: str, body: str) -> None: ...


class LogChannel:
    def send(self, *, recipient: User, subject: str, body: str) -> None:
        log.info("notify %s: %s — %s", recipient.username, subject, body)


class EmailChannel:
    def __init__(self, smtp_url: str, sender: str = "bpm@localhost") -> None:
        parsed = urlparse(smtp_url)
        self.host, self.port, self.sender = parsed.hostname or "localhost", parsed.port or 25, sender

    def send(self, *, recipient: User, subject: str, body: str) -> None:
        if not recipient.email:
            raise ValueError(f"user {recipient.username} has no e-mail address")
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = self.sender, recipient.email, subject
        message.set_content(body)
        with smtplib.SMTP(self.host, self.port, timeout=10) as smtp:
            smtp.send_message(message)


class SmsGateway(Protocol):
    """Sends one text to one mobile number (a vendor's SMS API); raises when it was not sent."""

    def send(self, *, phone: str, text: str) -> None: ...


class LogSmsGateway:
    """Until a vendor gateway is configured: the text goes to the log, the number masked."""

    def send(self, *, phone: str, text: str) -> None:
        log.info("sms %s: %s", mask_phone(phone), text)


SMS = "sms"


@dataclass(frozen=True)
class _ClaimedSms:
    id: int
    phone: str | None
    body: str


@dataclass(frozen=True)
class _Claimed:
    id: int
    recipient: User  # detached, loaded with the claim
    subject: str
    body: str


class Notifier:
    def __init__(self, channels: dict[str, Channel], *, lease: timedelta = LEASE, name: str | None = None,
                 sms: SmsGateway | None = None) -> None:
        self.channels = channels
        self.sms = sms
        self.lease = lease
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"

    @classmethod
    def from_settings(cls, rt: Runtime) -> Notifier:
        channels: dict[str, Channel] = {"log": LogChannel()}
        if rt.settings.smtp_url:
            channels["email"] = EmailChannel(rt.settings.smtp_url)
        return cls(channels, sms=LogSmsGateway())

    def deliver_pending(self, db: Database, rt: Runtime, *, limit: int = 200) -> int:
        """Send unsent notifications on every channel; returns how many were sent."""
        # Each call is its own claimant, so two threads sharing a notifier are still two
        # deliverers to each other.
        owner = f"{self.name}:{uuid4().hex[:12]}"[:128]
        batch = self._claim(db, rt, owner, limit)
        sent = 0
        outcome: tuple[int, str | None] | None = None
        for row in batch:
            if not self._record(db, rt, owner, outcome, renew=row.id):
                outcome = None  # the lease ran out and another deliverer has the row
                continue
            outcome = (row.id, self._send(row))
            sent += outcome[1] is None
        self._record(db, rt, owner, outcome, renew=None)
        if self.sms is not None:
            sent += self._deliver_sms(db, rt, owner, limit)
        return sent

    def _deliver_sms(self, db: Database, rt: Runtime, owner: str, limit: int) -> int:
        """The ``sms`` rows, claimed and recorded as the staff notices are."""
        assert self.sms is not None
        batch = self._claim_sms(db, rt, owner, limit)
        sent = 0
        outcome: tuple[int, str | None] | None = None
        for row in batch:
            if not self._record(db, rt, owner, outcome, renew=row.id):
                outcome = None
                continue
            error = None
            if not row.phone:
                error = "no phone number on record"
            else:
                try:
                    self.sms.send(phone=row.phone, text=row.body)
                except Exception as exc:  # noqa: BLE001 - one client's failure is recorded, not fatal
                    # The gateway's message may quote the number: keep it out of the row and the log.
                    error = f"{type(exc).__name__}: {exc}".replace(row.phone, mask_phone(row.phone) or "")[:2000]
            log.info("sms %s to %s: %s", row.id, mask_phone(row.phone) if row.phone else "-", error or "sent")
            outcome = (row.id, error)
            sent += error is None
        self._record(db, rt, owner, outcome, renew=None)
        return sent

    def _claim_sms(self, db: Database, rt: Runtime, owner: str, limit: int) -> list[_ClaimedSms]:
        now = rt.now()
        with db.transaction() as session:
            rows = session.execute(
                select(Notification.id, Notification.recipient, Notification.body)
                .where(Notification.channel == SMS, Notification.sent_at.is_(None),
                       Notification.attempts < MAX_ATTEMPTS,
                       or_(Notification.claimed_at.is_(None), Notification.claimed_at <= now - self.lease))
                .order_by(Notification.id).limit(limit).with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return []
            session.execute(update(Notification).where(Notification.id.in_([r.id for r in rows]))
                            .values(claimed_at=now, claimed_by=owner).execution_options(synchronize_session=False))
            clients = {r.recipient.split(":", 1)[1] for r in rows if r.recipient.startswith("client:")}
            phones = dict(session.execute(select(Client.client_id, Client.phone)
                                          .where(Client.client_id.in_(clients))).all()) if clients else {}
            claimed = []
            for r in rows:
                kind, _, ref = r.recipient.partition(":")
                claimed.append(_ClaimedSms(r.id, phones.get(ref) if kind == "client" else ref or None, r.body))
            return claimed

    def _claim(self, db: Database, rt: Runtime, owner: str, limit: int) -> list[_Claimed]:
        now = rt.now()
        with db.transaction() as session:
            rows = session.execute(
                select(Notification.id, Notification.subject, Notification.body, User)
                .join(User, User.username == Notification.recipient)
                .where(Notification.channel != SMS, Notification.sent_at.is_(None),
                       Notification.attempts < MAX_ATTEMPTS,
                       or_(Notification.claimed_at.is_(None), Notification.claimed_at <= now - self.lease))
                .order_by(Notification.id).limit(limit)
                # Only the outbox rows: locking the users too would make a second deliverer
                # skip every row of a recipient the first one is writing to.
                .with_for_update(of=Notification, skip_locked=True)
            ).all()
            if rows:
                session.execute(update(Notification).where(Notification.id.in_([r.id for r in rows]))
                                .values(claimed_at=now, claimed_by=owner)
                                .execution_options(synchronize_session=False))
            return [_Claimed(r.id, r.User, r.subject, r.body) for r in rows]

    def _send(self, row: _Claimed) -> str | None:
        """Send on every channel, outside any transaction; the error, if one failed."""
        try:
            for channel in self.channels.values():
                channel.send(recipient=row.recipient, subject=row.subject, body=row.body)
        except Exception as exc:  # noqa: BLE001 - one recipient's failure is recorded, not fatal
            return f"{type(exc).__name__}: {exc}"[:2000]
        return None

    def _record(self, db: Database, rt: Runtime, owner: str, outcome: tuple[int, str | None] | None, *,
                renew: int | None) -> bool:
        """One short transaction: the previous row's outcome, and a fresh lease on the next
        row; returns whether the next row is still this deliverer's to send."""
        if outcome is None and renew is None:
            return False
        now = rt.now()
        with db.transaction() as session:
            connection = session.connection()
            if outcome is not None:
                notification_id, error = outcome
                values = ({"sent_at": now} if error is None
                          else {"attempts": Notification.attempts + 1, "last_error": error})
                settled = connection.execute(update(Notification).where(_held(notification_id, owner))
                                             .values(claimed_at=None, claimed_by=None, **values))
                if rowcount(settled) == 0:
                    log.warning("notification %s: the lease ran out while it was being sent; "
                                "its new deliverer may send it again", notification_id)
            if renew is None:
                return False
            renewed = connection.execute(update(Notification).where(_held(renew, owner)).values(claimed_at=now))
            return rowcount(renewed) == 1


def _held(notification_id: int, owner: str) -> ColumnElement[bool]:
    # Every write after the claim is conditional on still holding it: a row another
    # deliverer took over (after the lease ran out) is that deliverer's to record.
    return and_(Notification.id == notification_id, Notification.claimed_by == owner, Notification.sent_at.is_(None))
