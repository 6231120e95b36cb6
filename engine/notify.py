"""Delivering the notification outbox after commit.

SLA milestones write ``bpm_notification`` rows inside the instance transaction; a notifier
sends them afterwards, so a rolled-back change never notifies anyone and a crashed sender
loses nothing (rows stay unsent and are retried). Channels are pluggable: ``log`` (the
default) and ``email`` (SMTP, when ``BPM_SMTP_URL`` is set) now; SMS can be added as another
channel without touching the engine.
"""

from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage
from typing import Protocol
from urllib.parse import urlparse

from sqlalchemy import select

from engine.db import Database
from engine.models import Notification, User
from engine.runtime import Runtime

log = logging.getLogger("bpm.notify")
MAX_ATTEMPTS = 5


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


class Notifier:
    def __init__(self, channels: dict[str, Channel]) -> None:
        self.channels = channels

    @classmethod
    def from_settings(cls, rt: Runtime) -> Notifier:
        channels: dict[str, Channel] = {"log": LogChannel()}
        if rt.settings.smtp_url:
            channels["email"] = EmailChannel(rt.settings.smtp_url)
        return cls(channels)

    def deliver_pending(self, db: Database, rt: Runtime, *, limit: int = 200) -> int:
        """Send unsent notifications on every channel; returns how many were sent."""
        with db.transaction() as session:
            rows = session.execute(
                select(Notification, User).join(User, User.username == Notification.recipient)
                .where(Notification.sent_at.is_(None), Notification.attempts < MAX_ATTEMPTS)
                .order_by(Notification.id).limit(limit).with_for_update(skip_locked=True)
            ).all()
            sent = 0
            for notification, user in rows:
                try:
                    for channel in self.channels.values():
                        channel.send(recipient=user, subject=notification.subject, body=notification.body)
                    notification.sent_at = rt.now()
                    sent += 1
                except Exception as exc:  # noqa: BLE001 - one recipient's failure is recorded, not fatal
                    notification.attempts += 1
                    notification.last_error = f"{type(exc).__name__}: {exc}"
            return sent
