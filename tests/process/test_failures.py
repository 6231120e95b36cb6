"""Failures inside a process: a service task raising, an expression failing or running too long.

The instance is marked failed with the error kept, what happened before the failure stays
saved, nothing is half-written, and a supervisor's retry resumes it once the cause is fixed,
after correcting the process data when the data was the cause.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import select

from engine import audit
from engine.access.identity import Actor
from engine.bootstrap import build_runtime
from engine.bpmn.service_tasks import ServiceRegistry
from engine.calendars import SHANGHAI
from engine.config import Settings
from engine.errors import DataInvalid, InstanceNotFound, InstanceNotRunning, PermissionDenied
from engine.models import ProcessInstance, Task
from engine.process import deployments, instances, passage, tasks, variables
from tests.support.bpmn import bundle_of, flow, linear, process, user_task

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
    """A runtime whose registry holds the test's functions instead of the built-in ones."""
    registry = ServiceRegistry()
    registry.register("core_lookup")(core)
    return build_runtime(settings, services=registry)


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
    assert [k for k, _ in _history(db, inst.id) if k not in passage.KINDS] == ["instance.started", "instance.failed"]


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
    slow_rt = build_runtime(Settings.from_env({"BPM_DATABASE_URL": database_url, "BPM_EXPRESSION_TIMEOUT_MS": "1"}))
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
        relaxed = build_runtime(Settings.from_env({"BPM_DATABASE_URL": database_url}))
        ok = instances.start(s, relaxed, process_key="heavy_flow", business_key="H-2", actor=people.clerk,
                             data={"items": list(range(20))})
        assert ok.status == "completed"


# -- correcting a failed instance's data ------------------------------------------------------
class StrictCore(CoreSystem):
    """Up, but refusing an amount that is not a positive whole number: bad process data."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def __call__(self, data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        amount = params["amount"]
        if isinstance(amount, int) and amount > 0:
            return super().__call__(data, params)
        self.calls.append(dict(params))
        raise ValueError(f"amount must be a positive whole number, got {amount!r}")


@pytest.fixture
def strict():
    return StrictCore()


@pytest.fixture
def srt(settings, strict):
    registry = ServiceRegistry()
    registry.register("core_lookup")(strict)
    return build_runtime(settings, services=registry)


GATEWAY = process(
    '    <bpmn:startEvent id="start"/>\n' + flow("start", "gw")
    + '    <bpmn:exclusiveGateway id="gw" default="f_gw_small"/>\n'
    + flow("gw", "big", condition="${amount &gt; 50000}") + flow("gw", "small")
    + '    <bpmn:endEvent id="big"/>\n    <bpmn:endEvent id="small"/>\n', key="gateway_flow")


def _failed_lookup(db, rt, people, business_key, amount, *, process_key="lookup_flow"):
    """An instance whose clerk typed a bad amount: the lookup after the first task fails."""
    with db.transaction() as s:
        inst = instances.start(s, rt, process_key=process_key, business_key=business_key, actor=people.clerk,
                               branch_code="HZ01")
    (first,) = _open(db, inst.id)
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=first.id, actor=people.clerk, data={"amount": amount})
    with db.transaction() as s:
        assert s.get(ProcessInstance, inst.id).status == "failed"
    return inst.id


def _events(db, instance_id, kind):
    with db.transaction() as s:
        return [(e.actor, e.data) for e in instances.history(s, instance_id, actor=Actor.system()) if e.kind == kind]


def test_a_corrected_amount_is_what_the_retried_step_runs_with(db, srt, people, strict):
    _deploy(db, srt, AFTER_A_TASK, people.owner)
    instance_id = _failed_lookup(db, srt, people, "FIX-1", -42)
    with db.transaction() as s:
        error = s.get(ProcessInstance, instance_id).error
    assert "amount must be a positive whole number, got -42" in error

    with db.transaction() as s:
        corrected = instances.correct_data(s, srt, instance_id=instance_id, actor=people.supervisor,
                                           set={"amount": 42}, remove=[], reason="柜员录入金额符号错误")
        assert corrected.status == "failed"  # a correction does not run anything: the retry does
        # the instance shows the corrected value before the retry
        assert instances.data_of(s, srt, corrected)["amount"] == 42
    assert strict.calls == [{"amount": -42}]

    with db.transaction() as s:
        retried = instances.retry(s, srt, instance_id=instance_id, actor=people.supervisor)
        assert (retried.status, retried.error) == ("running", None)
    assert strict.calls == [{"amount": -42}, {"amount": 42}]  # the retried step read the correction
    (second,) = _open(db, instance_id)
    assert second.element_id == "second"
    with db.transaction() as s:
        tasks.complete(s, srt, task_id=second.id, actor=people.clerk, data={})
    with db.transaction() as s:
        instance = s.get(ProcessInstance, instance_id)
        assert instance.status == "completed"
        assert instances.data_of(s, srt, instance)["core_ref"] == "CORE-42"
        assert audit.verify(s).broken == []

    kinds = [k for k, _ in _history(db, instance_id)]
    corrected_at = kinds.index("instance.data_corrected")
    assert kinds[corrected_at - 1:corrected_at + 2] == ["instance.failed", "instance.data_corrected",
                                                        "instance.retried"]
    assert kinds[-1] == "instance.completed"
    ((actor, data),) = _events(db, instance_id, "instance.data_corrected")
    assert actor == people.supervisor.username
    assert data == {"keys": ["amount"], "old": {"amount": -42}, "new": {"amount": 42},
                    "reason": "柜员录入金额符号错误", "error": error}


def test_a_missing_variable_is_added_and_a_misspelt_one_removed_and_the_gateway_decides_on_it(db, rt, people):
    _deploy(db, rt, GATEWAY, people.owner)
    with db.transaction() as s:  # "amout": the gateway's ${amount} has nothing to read
        inst = instances.start(s, rt, process_key="gateway_flow", business_key="FIX-2", actor=people.clerk,
                               data={"amout": 80000})
        assert inst.status == "failed" and "amount" in inst.error

    with db.transaction() as s:
        instances.correct_data(s, rt, instance_id=inst.id, actor=people.supervisor, set={"amount": 80000},
                               remove=["amout"], reason="变量名拼写错误")
    with db.transaction() as s:
        assert instances.retry(s, rt, instance_id=inst.id, actor=people.supervisor).status == "completed"
    with db.transaction() as s:
        instance = s.get(ProcessInstance, inst.id)
        data = instances.data_of(s, rt, instance)
        assert data["amount"] == 80000 and "amout" not in data
        workflow = rt.load(s, instance)
        ended = {t.task_spec.bpmn_id for t in workflow.get_tasks(state=TaskState.COMPLETED)}
        assert "big" in ended and "small" not in ended  # 80000 > 50000: the corrected value decided
        assert audit.verify(s).broken == []
    ((_, event),) = _events(db, inst.id, "instance.data_corrected")
    assert (event["keys"], event["old"], event["new"]) == (["amount", "amout"], {"amout": 80000}, {"amount": 80000})


def test_the_correction_reaches_an_open_task_of_a_parallel_branch(db, srt, people, strict):
    # The side branch's task holds its own copy of the data. It finishes after the lookup, so
    # at the join its copy is merged last: uncorrected, it would bring back -3.
    _deploy(db, srt, PARALLEL, people.owner)
    with db.transaction() as s:
        inst = instances.start(s, srt, process_key="parallel_flow", business_key="FIX-3", actor=people.clerk,
                               data={"amount": -3})
        assert inst.status == "failed"
    (side,) = _open(db, inst.id)
    with db.transaction() as s:
        instances.correct_data(s, srt, instance_id=inst.id, actor=people.supervisor, set={"amount": 3},
                               reason="金额应为正数")
        instances.retry(s, srt, instance_id=inst.id, actor=people.supervisor)
    assert strict.calls[-1] == {"amount": 3}
    with db.transaction() as s:
        tasks.complete(s, srt, task_id=side.id, actor=people.clerk, data={})
    with db.transaction() as s:
        instance = s.get(ProcessInstance, inst.id)
        assert instance.status == "completed"
        data = instances.data_of(s, srt, instance)
        assert (data["amount"], data["core_ref"]) == (3, "CORE-3")


def _props(**props: str) -> str:
    inner = "".join(f'<camunda:property name="{k}" value="{v}"/>' for k, v in props.items())
    return f"<bpmn:extensionElements><camunda:properties>{inner}</camunda:properties></bpmn:extensionElements>"


# The first task records who did it in "registrar" (engine.tasks.complete sets it).
RECORDED = process(linear(
    ("first", '    <bpmn:userTask id="first" name="登记" camunda:candidateGroups="clerks" camunda:formKey="any">'
              f'{_props(completedByVariable="registrar")}</bpmn:userTask>\n'),
    ("lookup", SERVICE), ("second", user_task("second", name="复核"))), key="recorded_flow")


def test_only_a_supervisor_who_sees_the_case_corrects_only_a_failed_instance(db, srt, people):
    _deploy(db, srt, RECORDED, people.owner)
    with db.transaction() as s:
        running = instances.start(s, srt, process_key="recorded_flow", business_key="FIX-4", actor=people.clerk,
                                  branch_code="HZ01")
    with pytest.raises(InstanceNotRunning), db.transaction() as s:  # 409: nothing has failed
        instances.correct_data(s, srt, instance_id=running.id, actor=people.supervisor, set={"amount": 1},
                               reason="x")

    instance_id = _failed_lookup(db, srt, people, "FIX-5", -1, process_key="recorded_flow")
    with pytest.raises(PermissionDenied), db.transaction() as s:
        instances.correct_data(s, srt, instance_id=instance_id, actor=people.clerk, set={"amount": 1},
                               reason="x")
    elsewhere = Actor(username="nb_boss", groups=frozenset({"supervisor"}), branch_code="NB02")
    with pytest.raises(InstanceNotFound), db.transaction() as s:  # another branch's case does not exist
        instances.correct_data(s, srt, instance_id=instance_id, actor=elsewhere, set={"amount": 1}, reason="x")
    with db.transaction() as s:
        assert instances.data_of(s, srt, s.get(ProcessInstance, instance_id))["amount"] == -1
    assert _events(db, instance_id, "instance.data_corrected") == []


def test_reserved_names_values_json_cannot_carry_and_a_blank_reason_are_refused_by_name(db, srt, people):
    _deploy(db, srt, RECORDED, people.owner)
    instance_id = _failed_lookup(db, srt, people, "FIX-6", -1, process_key="recorded_flow")
    with db.transaction() as s:
        assert instances.data_of(s, srt, s.get(ProcessInstance, instance_id))["registrar"] == people.clerk.username

    with pytest.raises(DataInvalid) as refused, db.transaction() as s:
        instances.correct_data(s, srt, instance_id=instance_id, actor=people.supervisor, reason="  ", set={
            "origin_business_key": "CMP-1", "branch_code": "NB01", "registrar": "boss",  # the engine's
            "when": datetime(2026, 1, 5, tzinfo=UTC), "ratio": math.nan, "pair": (1, 2), "codes": {1: "a"},
            "bad name": 1, "amount": 5,
        }, remove=["client_id", "no_such_variable", "amount"])
    by_field = {e.field: e.message for e in refused.value.errors}
    assert set(by_field) == {"reason", "set/origin_business_key", "set/branch_code", "set/registrar", "set/when",
                             "set/ratio", "set/pair", "set/codes", "set/bad name", "set/amount",
                             "remove/0", "remove/1"}
    assert "written by the engine" in by_field["set/registrar"] and "written by the engine" in by_field["remove/0"]
    assert "not a JSON value" in by_field["set/when"] and "both set and removed" in by_field["set/amount"]
    assert "no variable 'no_such_variable'" in by_field["remove/1"]
    assert refused.value.details["errors"][0] == {"field": "reason",
                                                  "message": "a reason is required: it is kept in the audit trail"}
    with pytest.raises(DataInvalid) as empty, db.transaction() as s:
        instances.correct_data(s, srt, instance_id=instance_id, actor=people.supervisor, reason="nothing")
    assert [e.field for e in empty.value.errors] == [""]

    with db.transaction() as s:  # nothing was changed, nothing recorded
        instance = s.get(ProcessInstance, instance_id)
        assert instance.status == "failed"
        assert instances.data_of(s, srt, instance)["amount"] == -1
        assert audit.verify(s).broken == []
    assert _events(db, instance_id, "instance.data_corrected") == []


def test_every_variable_the_client_registry_brings_is_reserved():
    """The context a case starts with (instances._with_client_context) and the reserved
    names must not drift apart: a new registry key is reserved too, or this fails."""

    found = SimpleNamespace(client_id="C01", client_branch_code="HZ01", service_group_key="HZ01-G1",
                            classification="C2", vip_tier="gold", risk_level="C3", birth_date=date(1958, 1, 20))
    context = instances._with_client_context(found, {}, datetime(2026, 3, 2, 9, tzinfo=SHANGHAI))
    assert len(context) == 7 and set(context) <= variables.ENGINE_VARIABLES
    assert context["client_age_at_start"] == 68
