"""The engine's clock: every "now" in the engine comes from here.

Tests move time with ``time-machine``, which patches ``datetime.now`` and so also moves
SpiffWorkflow's own timer checks; nothing sleeps.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    """Wall-clock time, always timezone-aware UTC."""

    def now(self) -> datetime:
        return datetime.now(UTC)


def ensure_aware(value: datetime, *, name: str = "datetime") -> datetime:
    """Refuse naive datetimes: a naive value is ambiguous by eight hours in Shanghai."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {value!r}")
    return value
