"""The engine objects an app instance holds: settings, database, runtime, field policy, and
the sign-in throttle."""

from __future__ import annotations

from dataclasses import dataclass, field

from flask import current_app

from engine.access.field_policy import FieldPolicy
from engine.access.signin import Throttle
from engine.config import Settings
from engine.db import Database
from engine.process.runtime import Runtime


@dataclass
class BpmContext:
    settings: Settings
    db: Database
    runtime: Runtime
    # Sign-in counts (engine.access.signin): in Redis when BPM_REDIS_URL is set, so
    # gunicorn's workers count together; else in this process's memory.
    throttle: Throttle
    # Loaded once at start (create_app): a policy is configuration, refused before serving.
    field_policy: FieldPolicy = field(default_factory=FieldPolicy)


def bpm() -> BpmContext:
    ctx: BpmContext = current_app.extensions["bpm"]
    return ctx
