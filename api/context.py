"""The engine objects an app instance holds: settings, database, runtime."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from engine.config import Settings
from engine.db import Database
from engine.runtime import Runtime


@dataclass
class BpmContext:
    settings: Settings
    db: Database
    runtime: Runtime


def bpm() -> BpmContext:
    ctx: BpmContext = current_app.extensions["bpm"]
    return ctx
