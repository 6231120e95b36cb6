"""The one place a :class:`~engine.process.runtime.Runtime` is assembled.

Every entry point (the API factory, the CLI, the rq job, the tests, the benchmarks) builds
its runtime here, so each runs the same engine: the brokerage installed, thrown messages
delivered by the message service, and the deployment's own service-task modules added.
"""

from __future__ import annotations

import importlib

from engine import brokerage
from engine.bpmn.service_tasks import ServiceRegistry
from engine.clock import Clock, SystemClock
from engine.config import Settings
from engine.errors import ConfigError
from engine.process import messages
from engine.process.runtime import Runtime, TimerScheduler
from engine.sla import admin as sla_admin
from engine.timers.queueing import RqScheduler


def build_runtime(settings: Settings, *, scheduler: TimerScheduler | None = None, clock: Clock | None = None,
                  services: ServiceRegistry | None = None) -> Runtime:
    """A runtime for ``settings``. ``scheduler`` is told about new timers after commit
    (see :func:`rq_scheduler`; ``bpm serve`` sets its embedded runner once it exists);
    ``services`` replaces the built-in service-task functions (tests register their own)."""
    runtime = Runtime(settings, clock=clock or SystemClock(), scheduler=scheduler,
                      services=services if services is not None else ServiceRegistry.with_builtins())
    runtime.deliver_thrown = messages.correlate
    # Administrators are told, once a day from 1 November, while next year's calendar is unknown.
    runtime.jobs[sla_admin.COVERAGE_JOB] = sla_admin.coverage_job
    brokerage.install(runtime)
    for name in settings.service_modules:
        module = importlib.import_module(name)
        install = getattr(module, "install", None)
        if not callable(install):
            raise ConfigError(f"BPM_SERVICE_MODULES: module {name!r} has no install(runtime) function")
        install(runtime)
    return runtime


def rq_scheduler(settings: Settings) -> RqScheduler | None:
    """Where a process that does not fire timers itself announces them: rq, when
    ``BPM_REDIS_URL`` is set (``bpm worker`` fires them); else nowhere."""
    return RqScheduler(settings.redis_url) if settings.redis_url else None
