"""What the SLA package needs of the engine that runs it.

The engine's :class:`~engine.process.runtime.Runtime` sits above this package (it starts a
task's clock as it projects the task) and satisfies this protocol; naming the protocol here
keeps every import pointing down.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from sqlalchemy.orm import Session

from engine.models import ProcessInstance, Timer
from engine.sla.calendar_store import PolicyCache


class SlaHost(Protocol):
    @property
    def policies(self) -> PolicyCache: ...

    def now(self) -> datetime: ...

    def announce_timer(self, session: Session, timer: Timer | tuple[int, datetime]) -> None: ...

    def load(self, session: Session, instance: ProcessInstance) -> BpmnWorkflow: ...
