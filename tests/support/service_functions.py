"""Service-task functions used only by tests; loaded via BPM_SERVICE_MODULES."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from engine.bpmn.service_tasks import ServiceRegistry
from engine.process.runtime import Runtime

functions = ServiceRegistry()


def install(runtime: Runtime) -> None:
    runtime.services.include(functions)


@functions.register("block_for_test")
def block_for_test(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Record an attempt, then wait until the test releases it (a file appears)."""
    marker, release = Path(params["marker"]), Path(params["release"])
    with marker.open("a", encoding="utf-8") as handle:
        handle.write("attempt\n")
    deadline = time.monotonic() + 120
    while not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never released the service task")
        time.sleep(0.02)
    return {"blocked": "released"}
