"""The brokerage's own processes and data: the client registry, classification and VIP
tiers, the service-task functions of the four processes, the figures, the settings they
read, the scheduled jobs and the demo.

Everything here builds on the engine core; nothing in the core imports this package. It
plugs in at one place, :func:`install`, which :func:`engine.bootstrap.build_runtime` calls.
"""

from __future__ import annotations

import functools

from engine.brokerage import (
    closure,
    complaint_clock,
    complaint_events,
    do_not_call,
    periodic_callbacks,
    vip_evaluation,
    vip_tier,
)
from engine.brokerage.services import callback, complaint, retention, vip
from engine.process.runtime import Runtime


def install(runtime: Runtime) -> None:
    """Register the brokerage with a runtime: the service-task functions its diagrams call,
    the jobs its schedules run, the hooks that apply a VIP case's outcome to the client's
    tier and a completed account closure to the registry and the client's other cases as
    the step is saved, and the complaint's whole-case deadline (its clock starts at
    classification, stops at the answer, moves on an approved extension or when the client takes
    the matter to 12386), and what a complaint's automatic steps tell people."""
    for module in (complaint, retention, callback, vip):
        runtime.services.include(module.functions)
    runtime.jobs[vip_evaluation.JOB_NAME] = vip_evaluation.job
    runtime.jobs[periodic_callbacks.JOB_NAME] = periodic_callbacks.job
    runtime.jobs[periodic_callbacks.COVERAGE_JOB] = periodic_callbacks.coverage_job
    runtime.on_facts_changed.append(vip_tier.on_facts_changed)
    runtime.on_facts_changed.append(do_not_call.on_facts_changed)
    runtime.on_facts_changed.append(closure.hook(runtime))
    runtime.on_facts_changed.append(functools.partial(complaint_clock.on_facts_changed, runtime))
    runtime.on_task_completed.append(complaint_clock.on_task_completed)
    # A complaint's automatic steps reach people (compliance, the handlers on a chase, the
    # investigator on new evidence, the client by SMS) and move its deadline (12386); its
    # classification counts the complaints on the same matter (group complaints).
    runtime.on_engine_task_ran.append(complaint_events.on_engine_task_ran)
    runtime.on_engine_task_ready.append(complaint_events.before_classification)
