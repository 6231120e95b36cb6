"""Failures inside a process: a service task raising, an expression failing or running too long.

The instance is marked failed with the error kept, what happened before the failure stays
saved, nothing is half-written, and a supervisor's retry resumes it once the cause is fixed.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import select

from engine import audit, deployments, instances, tasks
from engine.config import Settings
from engine.errors import InstanceNotRunning, PermissionDenied
from engine.identity import Actor
from engine.models import ProcessInstance, Task
from engine.runtime import Runtime
from engine.service_tasks import ServiceRegistry
from tests.engine_bpmn import bundle_of, flow, linear, process, user_task

pytestmark = pytest.mark.sqlite



class CoreSystem:
    """A service-task function whose outage the test switches on and off."""

    def __init__(self) -> None:
        self.down = True
        self.calls: list[dict[str, Any]] = []

    def __call__(self, data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(dict(params))
        if self.down:
            raise ConnectionError("核心系统不可用 core system unreachable")
        return {"core_ref": f"CORE-{params['amount']}"}


@pytest.fixture
def core():
    return CoreSystem()


@pytest.fixture
def frt(settings, core):
    """A runtime whose registry holds only the test's functions."""
    registry = ServiceRegistry()
    registry.register("core_lookup")(core)
    return Runtime(settings, services=registry)


SERVICE = ('    <bpmn:serviceTask id="lookup" name="查询核心系统" camunda:type="external" camunda:topic="core_lookup">'
           "<bpmn:extensionElements><camunda:inputOutput>"
           '<camunda:inputParameter name="amount">${amount}</camunda:inputParameter>'
           "</camunda:inputOutput></bpmn:extensionElements></bpmn:serviceTask>\n")

AFTER_A_TASK = process(linear(("first", user_task("first", name="登记")), ("lookup", SERVICE),
                              ("second", user_task("second", name="复核"))), key="lookup_flow")

PARALLEL = process(
    '    <bpmn:startEvent id="start"/>\n' + flow("start", "fork")
    + '    <bpmn:parallelGateway id="fork"/>\n' + flow("fork", "side") + flow("fork", "lookup")
    + user_task("side", name="并行任务") + SERVICE
    + flow("side", "join") + flow("lookup", "join")
    + '    <bpmn:parallelGateway id="join"/>\n' + flow("join", "end") + '    <bpmn:endEvent id="end"/>\n',
    key="parallel_flow")


def _deploy(db, rt, xml, actor):
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(xml), actor=actor)


def _open(db, instance_id):
    with db.transaction() as s:
        return list(s.execute(select(Task).where(Task.instance_id == instance_id, Task.status.in_(("open", "claimed")))
                              .order_by(Task.id)).scalars())


def _history(db, instance_id):
    with db.transaction() as s:
        return [(e.kind, e.data) for e in instances.history(s, instance_id, actor=Actor.system())]


def test_a_service_task_that_raises_fails_the_instance_and_keeps_what_came_before(db, frt, people, core):
    _deploy(db, frt, AFTER_A_TASK, people.owner)
    with db.transaction() as s:
        inst = instances.start(s, frt, process_key="lookup_flow", business_key="L-1", actor=people.clerk)
    (first,) = _open(db, inst.id)
    with db.transaction() as s:  # the completion itself succeeds; the step after it fails
        tasks.complete(s, frt, task_id=first.id, actor=people.clerk, data={"amount": 42})

    assert core.calls == [{"amount": 42}]
    with db.transaction() as s:
        instance = s.get(ProcessInstance, inst.id)
        assert instance.status == "failed"
        assert instance.error.startswith("lookup (查询核心系统): ConnectionError: ")
        assert "core system unreachable" in instance.error
        assert s.get(Task, first.id).status == "completed"  # the clerk's work is not lost
        workflow = frt.load(s, instance)
        states = {t.task_spec.bpmn_id: t.state for t in workflow.get_tasks() if t.task_spec.bpmn_id}
        assert states["first"] == TaskState.COMPLETED and states["lookup"] == TaskState.ERROR
        assert workflow.get_tasks(spec_name="second") == [] or all(
            not t.has_state(TaskState.READY) for t in workflow.get_tasks(spec_name="second"))
        assert audit.verify(s).broken == []
    assert _open(db, inst.id) == []
    kinds = [k for k, _ in _history(db, inst.id)]
    assert kinds[-3:] == ["task.claimed", "task.completed", "instance.failed"]
    assert "core system unreachable" in _history(db, inst.id)[-1][1]["error"]


def test_retry_after_the_cause_is_fixed_completes_the_instance(db, frt, people, core):
    _deploy(db, frt, AFTER_A_TASK, people.owner)
    with db.transaction() as s:
        inst = instances.start(s, frt, process_key="lookup_flow", business_key="L-2", actor=people.clerk)
    (first,) = _open(db, inst.id)
    with db.transaction() as s:
        tasks.complete(s, frt, task_id=first.id, actor=people.clerk, data={"amount": 7})

    with pytest.raises(PermissionDenied), db.transaction() as s:
        instances.retry(s, frt, instance_id=inst.id, actor=people.clerk)
    with db.transaction() as s:  # still broken: fails again, error refreshed, nothing else changes
        again = instances.retry(s, frt, instance_id=inst.id, actor=people.supervisor)
        assert again.status == "failed"
    core.down = False
    with db.transaction() as s:
        retried = instances.retry(s, frt, instance_id=inst.id, actor=people.supervisor)
        assert (retried.status, retried.error) == ("running", None)
    assert len(core.calls) == 3
    (second,) = _open(db, inst.id)
    assert second.element_id == "second"
    with db.transaction() as s:
        tasks.complete(s, frt, task_id=second.id, actor=people.clerk, data={})
    with db.transaction() as s:
        instance = s.get(ProcessInstance, inst.id)
        assert instance.status == "completed"
        assert instances.data_of(s, frt, instance)["core_ref"] == "CORE-7"
        assert audit.verify(s).broken == []
    kinds = [k for k, _ in _history(db, inst.id)]
    assert kinds.count("instance.failed") == 2 and kinds.count("instance.retried") == 2
    assert kinds[-1] == "instance.completed"
    with pytest.raises(InstanceNotRunning), db.transaction() as s:  # only a failed instance is retried
        instances.retry(s, frt, instance_id=inst.id, actor=people.supervisor)


def test_a_failure_right_at_start_is_saved_as_a_failed_instance(db, frt, people, core):
    _deploy(db, frt, process(linear(("lookup", SERVICE), ("second", user_task("second"))), key="eager"),
            people.owner)
    with db.transaction() as s:
        inst = instances.start(s, frt, process_key="eager", business_key="E-1", actor=people.clerk,
                               data={"amount": 1})
        assert inst.status == "failed"
    with db.transaction() as s:
        stored = s.get(ProcessInstance, inst.id)
        assert stored.status == "failed" and "core system unreachable" in stored.error
    assert [k for k, _ in _history(db, inst.id)] == ["instance.started", "instance.failed"]


def test_open_tasks_of_a_failed_instance_stay_visible_but_wait_for_the_retry(db, frt, people, core):
    _deploy(db, frt, PARALLEL, people.owner)
    with db.transaction() as s:
        inst = instances.start(s, frt, process_key="parallel_flow", business_key="P-1", actor=people.clerk,
                               data={"amount": 3})
        assert inst.status == "failed"
    (side,) = _open(db, inst.id)
    assert side.element_id == "side"
    with pytest.raises(InstanceNotRunning), db.transaction() as s:
        tasks.complete(s, frt, task_id=side.id, actor=people.clerk, data={})
    assert [t.id for t in _open(db, inst.id)] == [side.id]
    core.down = False
    with db.transaction() as s:
        instances.retry(s, frt, instance_id=inst.id, actor=people.supervisor)
    with db.transaction() as s:
        tasks.complete(s, frt, task_id=side.id, actor=people.clerk, data={})
    with db.transaction() as s:
        assert s.get(ProcessInstance, inst.id).status == "completed"


def test_an_expression_error_at_run_time_fails_the_instance(db, rt, people):
    xml = process(
        '    <bpmn:startEvent id="start"/>\n' + flow("start", "gw")
        + '    <bpmn:exclusiveGateway id="gw" default="f_gw_small"/>\n'
        + flow("gw", "big", condition="${amount &gt; 50000}") + flow("gw", "small")
        + '    <bpmn:endEvent id="big"/>\n    <bpmn:endEvent id="small"/>\n', key="gateway_flow")
    _deploy(db, rt, xml, people.owner)
    with db.transaction() as s:  # no "amount" in the data
        inst = instances.start(s, rt, process_key="gateway_flow", business_key="G-1", actor=people.clerk)
    assert inst.status == "failed"
    assert "amount" in inst.error and "gw" in inst.error


def test_an_expression_that_runs_too_long_is_stopped_and_fails_the_instance(db, database_url, people):
    slow_rt = Runtime(Settings.from_env({"BPM_DATABASE_URL": database_url, "BPM_EXPRESSION_TIMEOUT_MS": "1"}))
    heavy = "${len([a * b for a in items for b in items if a != b]) &gt; 0}"  # allowed, ~10,000 steps
    xml = process(
        '    <bpmn:startEvent id="start"/>\n' + flow("start", "gw")
        + '    <bpmn:exclusiveGateway id="gw" default="f_gw_other"/>\n'
        + flow("gw", "heavy_end", condition=heavy) + flow("gw", "other")
        + '    <bpmn:endEvent id="heavy_end"/>\n    <bpmn:endEvent id="other"/>\n', key="heavy_flow")
    _deploy(db, slow_rt, xml, people.owner)  # it parses and is allowed: deploy accepts it

    started = time.monotonic()
    with db.transaction() as s:
        inst = instances.start(s, slow_rt, process_key="heavy_flow", business_key="H-1", actor=people.clerk,
                               data={"items": list(range(99))})
    assert time.monotonic() - started < 5
    assert inst.status == "failed"
    assert "took too long" in inst.error
    # The same expression finishes with the default budget: it was stopped, not refused.
    with db.transaction() as s:
        relaxed = Runtime(Settings.from_env({"BPM_DATABASE_URL": database_url}))
        ok = instances.start(s, relaxed, process_key="heavy_flow", business_key="H-2", actor=people.clerk,
                             data={"items": list(range(20))})
        assert ok.status == "completed"
