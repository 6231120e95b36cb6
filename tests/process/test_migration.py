"""Comparing versions and moving running cases to another version: a compatible change moves
and the case finishes on version 2; a removed active step or a retyped form field is refused
with the reason and the case carries on on version 1; a waiting timer keeps its due time;
new cases start on version 2 while version-1 cases continue; only process owners may."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import select

from engine.errors import PermissionDenied, TaskNotFound
from engine.models import (
    AuditEvent,
    InstanceStatus,
    MessageSubscription,
    ProcessInstance,
    ProcessVersion,
    Task,
    TaskCandidate,
    Timer,
    TimerKind,
    TimerStatus,
)
from engine.process import deployments, instances, messages, migration, tasks, version_diff
from engine.sla import admin as sla_admin
from tests.conftest import deploy_fixture
from tests.support.bpmn import bundle_of, fixture_bundle, flow, linear, process, user_task

pytestmark = pytest.mark.sqlite

V1 = process(linear(("a", user_task("a", name="登记")), ("b", user_task("b", name="审批", groups="managers"))))
# Version 2: 登记 goes to the managers, and a new step 复核 comes between 登记 and 审批.
V2 = process(linear(("a", user_task("a", name="登记", groups="managers")), ("c", user_task("c", name="复核")),
                    ("b", user_task("b", name="审批", groups="managers"))))
# Version 2 without 登记: a case waiting at it has nowhere to be.
V2_WITHOUT_A = process(linear(("b", user_task("b", name="审批", groups="managers"))))


def _deploy(db, rt, xml, owner, forms=None):
    with db.transaction() as s:
        return deployments.deploy(s, rt, bundle_of(xml, forms), actor=owner)[0].version.version


def _start(db, rt, clerk, key, process_key="p"):
    with db.transaction() as s:
        return instances.start(s, rt, process_key=process_key, business_key=key, actor=clerk).id


def _open(db, instance_id):
    with db.transaction() as s:
        return [(t.id, t.element_id) for t in s.execute(
            select(Task).where(Task.instance_id == instance_id, Task.status.in_(("open", "claimed")))
            .order_by(Task.id)).scalars()]


def _version_of(db, instance_id):
    with db.transaction() as s:
        instance = s.get(ProcessInstance, instance_id)
        return s.get(ProcessVersion, instance.process_version_id).version


def _complete_all(db, rt, instance_id, actor_of):
    for _ in range(10):
        steps = _open(db, instance_id)
        if not steps:
            return
        task_id, element = steps[0]
        with db.transaction() as s:
            tasks.complete(s, rt, task_id=task_id, actor=actor_of(element), data={})


def test_a_compatible_change_moves_the_case_and_it_finishes_on_version_2(db, rt, people):
    _deploy(db, rt, V1, people.owner)
    case = _start(db, rt, people.clerk, "M-1")
    assert _open(db, case)[0][1] == "a"
    _deploy(db, rt, V2, people.owner)

    with db.transaction() as s:
        planned = migration.dry_run(s, rt, instance_id=case, process_key="p", to_version=2, actor=people.owner)
    assert planned.can_move and not planned.moved and planned.reasons == []
    assert any("候选组：clerks → managers" in w.zh for w in planned.changes), planned.changes
    assert _version_of(db, case) == 1  # a dry run stores nothing

    with db.transaction() as s:
        moved = migration.migrate(s, rt, instance_id=case, process_key="p", to_version=2, actor=people.owner)
    assert moved.moved and moved.from_version == 1 and moved.to_version == 2
    assert _version_of(db, case) == 2
    with db.transaction() as s:
        row = s.execute(select(Task).where(Task.instance_id == case, Task.element_id == "a")).scalar_one()
        assert row.candidate_groups == ["managers"]
        assert s.execute(select(TaskCandidate.group_key).where(TaskCandidate.task_id == row.id)).scalars().all() \
            == ["managers"]
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "instance.migrated")).scalar_one()
        assert event.actor == "owner" and event.data["from_version"] == 1 and event.data["to_version"] == 2
    # The clerk no longer sees 登记 (no longer offered to clerks); the manager takes it, and
    # the new step 复核 follows.
    with db.transaction() as s, pytest.raises(TaskNotFound):
        tasks.claim(s, rt, task_id=row.id, actor=people.clerk)
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=row.id, actor=people.manager, data={})
    assert [e for _, e in _open(db, case)] == ["c"]
    _complete_all(db, rt, case, lambda element: people.clerk if element == "c" else people.manager)
    with db.transaction() as s:
        assert s.get(ProcessInstance, case).status == InstanceStatus.COMPLETED


def test_a_removed_active_step_is_refused_with_the_reason_and_the_case_carries_on_on_version_1(db, rt, people):
    _deploy(db, rt, V1, people.owner)
    case = _start(db, rt, people.clerk, "M-2")
    _deploy(db, rt, V2_WITHOUT_A, people.owner)
    with db.transaction() as s:
        planned = migration.dry_run(s, rt, instance_id=case, process_key="p", to_version=2, actor=people.owner)
    assert not planned.can_move
    assert [r.code for r in planned.reasons] == ["active_step_removed"]
    assert "「登记」" in planned.reasons[0].words.zh
    with db.transaction() as s:
        refused = migration.migrate(s, rt, instance_id=case, process_key="p", to_version=2, actor=people.owner)
    assert not refused.moved and refused.reasons[0].code == "active_step_removed"
    assert _version_of(db, case) == 1
    with db.transaction() as s:
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "instance.migration_refused")).scalar_one()
        assert event.data["reasons"] == ["active_step_removed"]
    _complete_all(db, rt, case, lambda element: people.clerk if element == "a" else people.manager)
    with db.transaction() as s:
        assert s.get(ProcessInstance, case).status == InstanceStatus.COMPLETED
    assert _version_of(db, case) == 1


def test_new_cases_start_on_version_2_while_version_1_cases_continue_and_only_chosen_cases_move(db, rt, people):
    _deploy(db, rt, V1, people.owner)
    old = [_start(db, rt, people.clerk, f"M-3{i}") for i in range(3)]
    _deploy(db, rt, V2, people.owner)
    new = _start(db, rt, people.clerk, "M-39")
    assert _version_of(db, new) == 2 and [_version_of(db, c) for c in old] == [1, 1, 1]
    with db.transaction() as s:
        chosen = migration.select_cases(s, "p", 2, migration.Selection(from_version=1), actor=people.owner)
        assert chosen == old
        assert migration.select_cases(s, "p", 2, migration.Selection(instance_ids=(old[1],)),
                                      actor=people.owner) == [old[1]]
        moved = migration.migrate(s, rt, instance_id=old[1], process_key="p", to_version=2, actor=people.owner)
    assert moved.moved
    assert [_version_of(db, c) for c in old] == [1, 2, 1]
    # A version-1 case goes on along version 1: no 复核.
    task_id, _ = _open(db, old[0])[0]
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=task_id, actor=people.clerk, data={})
    assert [e for _, e in _open(db, old[0])] == ["b"]
    # Moving it again is refused: it is on version 2 already.
    with db.transaction() as s:
        again = migration.dry_run(s, rt, instance_id=old[1], process_key="p", to_version=2, actor=people.owner)
    assert [r.code for r in again.reasons] == ["same_version"]


TIMER_V1 = process(
    '    <bpmn:startEvent id="start"/>\n'
    '    <bpmn:intermediateCatchEvent id="wait" name="等待">\n'
    '      <bpmn:timerEventDefinition><bpmn:timeDuration>"PT4H"</bpmn:timeDuration></bpmn:timerEventDefinition>\n'
    '    </bpmn:intermediateCatchEvent>\n'
    + user_task("ack", name="确认") + '    <bpmn:endEvent id="end"/>\n'
    + flow("start", "wait") + flow("wait", "ack") + flow("ack", "end"))


def _timer_rows(db, case):
    with db.transaction() as s:
        return [(t.status, t.due_at) for t in s.execute(
            select(Timer).where(Timer.instance_id == case, Timer.kind == TimerKind.BPMN).order_by(Timer.id)).scalars()]


def test_a_waiting_timer_keeps_its_due_time_unless_its_definition_changes(db, rt, people):
    _deploy(db, rt, TIMER_V1, people.owner)
    case = _start(db, rt, people.clerk, "M-4")
    [(status, due)] = _timer_rows(db, case)
    assert status == TimerStatus.WAITING
    _deploy(db, rt, TIMER_V1.replace('name="确认"', 'name="确认收到"'), people.owner)
    with db.transaction() as s:
        assert migration.migrate(s, rt, instance_id=case, process_key="p", to_version=2, actor=people.owner).moved
    rows = _timer_rows(db, case)
    waiting = [d for st, d in rows if st == TimerStatus.WAITING]
    assert waiting == [due]  # the same moment, not four hours from the migration

    _deploy(db, rt, TIMER_V1.replace('"PT4H"', '"PT8H"'), people.owner)
    with db.transaction() as s:
        planned = migration.dry_run(s, rt, instance_id=case, process_key="p", to_version=3, actor=people.owner)
        assert planned.can_move and any("定时器「等待」到期" in w.zh for w in planned.changes)
        assert migration.migrate(s, rt, instance_id=case, process_key="p", to_version=3, actor=people.owner).moved
    waiting = [d for st, d in _timer_rows(db, case) if st == TimerStatus.WAITING]
    assert len(waiting) == 1 and waiting[0] > due


TYPED = {"type": "object", "properties": {"amount": {"type": "number"}}}


def test_an_active_step_whose_form_retypes_a_field_is_refused(db, rt, people):
    _deploy(db, rt, V1, people.owner, forms={"any": TYPED})
    case = _start(db, rt, people.clerk, "M-5")
    _deploy(db, rt, V1, people.owner, forms={"any": {"type": "object", "properties": {"amount": {"type": "string"}}}})
    with db.transaction() as s:
        planned = migration.dry_run(s, rt, instance_id=case, process_key="p", to_version=2, actor=people.owner)
    assert [r.code for r in planned.reasons] == ["form_incompatible"]
    assert "amount" in planned.reasons[0].words.zh
    # A field added to the form is a change the dry run names, not a refusal.
    _deploy(db, rt, V1, people.owner, forms={"any": {**TYPED, "properties": {**TYPED["properties"],
                                                                             "note": {"type": "string"}}}})
    with db.transaction() as s:
        planned = migration.dry_run(s, rt, instance_id=case, process_key="p", to_version=3, actor=people.owner)
    assert planned.can_move and any("新增字段 note" in w.zh for w in planned.changes)


def test_the_diff_lists_added_removed_and_changed_elements_in_words(db, rt, people):
    conditional = process(
        '    <bpmn:startEvent id="start"/>\n    <bpmn:exclusiveGateway id="gw" default="f_small"/>\n'
        + user_task("big", name="经理审批", groups="managers") + user_task("small", name="组长审批")
        + '    <bpmn:endEvent id="end"/>\n' + flow("start", "gw")
        + flow("gw", "big", condition="${amount &gt; 50000}", flow_id="f_big") + flow("gw", "small", flow_id="f_small")
        + flow("big", "end") + flow("small", "end"))
    _deploy(db, rt, conditional, people.owner)
    changed = (conditional.replace("50000", "100000").replace('name="组长审批"', 'name="组长复核"')
               .replace(user_task("big", name="经理审批", groups="managers"),
                        user_task("big", name="经理审批", groups="managers", extra='camunda:assignee="wang"')))
    with db.transaction() as s:
        base, label, found = version_diff.diff(s, rt, "p", actor=people.owner, draft_xml=changed.encode())
        assert (base, label) == (1, "draft")
        words = {c.element_id: c.words() for c in found.changes}
        assert set(words) == {"f_big", "small", "big"}
        assert "条件：${amount > 50000} → ${amount > 100000}" in words["f_big"].zh
        assert "名称：组长审批 → 组长复核" in words["small"].zh and "name: 组长审批 → 组长复核" in words["small"].en
        assert "处理人：（无） → wang" in words["big"].zh
        _, _, nothing = version_diff.diff(s, rt, "p", actor=people.owner, version=1)
        assert nothing.changes == []
    _deploy(db, rt, V1, people.owner)  # replaces every step
    with db.transaction() as s:
        _, label, found = version_diff.diff(s, rt, "p", actor=people.owner, version=1, against=2)
    kinds = {c.element_id: c.kind for c in found.changes}
    assert label == "version 1"
    assert kinds["gw"] == "added" and kinds["a"] == "removed" and kinds["b"] == "removed"


def test_only_process_owners_may_compare_or_move_cases(db, rt, people):
    _deploy(db, rt, V1, people.owner)
    case = _start(db, rt, people.clerk, "M-6")
    _deploy(db, rt, V2, people.owner)
    for who in (people.clerk, people.supervisor):
        with db.transaction() as s:
            with pytest.raises(PermissionDenied):
                migration.dry_run(s, rt, instance_id=case, process_key="p", to_version=2, actor=who)
            with pytest.raises(PermissionDenied):
                migration.migrate(s, rt, instance_id=case, process_key="p", to_version=2, actor=who)
            with pytest.raises(PermissionDenied):
                migration.select_cases(s, "p", 2, migration.Selection(), actor=who)
            with pytest.raises(PermissionDenied):
                version_diff.diff(s, rt, "p", actor=who, version=1)
    assert _version_of(db, case) == 1


MILESTONES = [{"at": 0.5, "action": "notify", "to": "assignee"}, {"at": 1.0, "action": "escalate", "to": "managers"}]
FIXED_DUE = "2030-06-28T17:00:00+08:00"


def _sla_timers(db, task_uuid):
    with db.transaction() as s:
        found = s.execute(select(Timer).where(Timer.kind == TimerKind.SLA, Timer.task_uuid == task_uuid)
                          .order_by(Timer.id)).scalars()
        return [(t.status, t.due_at) for t in found]


def test_an_open_steps_due_date_and_sla_milestones_are_derived_again_from_version_2(db, rt, people):
    with db.transaction() as s:
        sla_admin.upsert_policy(s, rt, actor=people.owner, data={
            "key": "p.a", "name": "登记", "process_key": "p", "element_id": "a", "target_amount": 2,
            "target_unit": "CD", "milestones": MILESTONES})
    _deploy(db, rt, V1, people.owner)
    case = _start(db, rt, people.clerk, "M-7")
    with db.transaction() as s:
        row = s.execute(select(Task).where(Task.instance_id == case)).scalar_one()
        uuid, created, due_before = row.task_uuid, row.created_at, row.due_at
    assert due_before is not None and [st for st, _ in _sla_timers(db, uuid)] == ["waiting", "waiting"]
    # Version 2 gives the step a due date of its own (a regulator's date).
    _deploy(db, rt, V1.replace('id="a" name="登记"', f'id="a" name="登记" camunda:dueDate="{FIXED_DUE}"'),
            people.owner)
    with db.transaction() as s:
        planned = migration.dry_run(s, rt, instance_id=case, process_key="p", to_version=2, actor=people.owner)
    assert any("到期时间" in w.zh and "2030-06-28 17:00" in w.zh for w in planned.changes), planned.changes
    with db.transaction() as s:
        assert migration.migrate(s, rt, instance_id=case, process_key="p", to_version=2, actor=people.owner).moved
        row = s.execute(select(Task).where(Task.instance_id == case)).scalar_one()
        assert row.due_at == datetime.fromisoformat(FIXED_DUE) and row.due_source == "diagram"
        assert row.created_at == created and row.sla_started_at is not None  # the clock keeps its start
    timers = _sla_timers(db, uuid)
    assert [st for st, _ in timers] == ["cancelled", "cancelled", "waiting", "waiting"]
    assert max(d for st, d in timers if st == "waiting") <= datetime.fromisoformat(FIXED_DUE)


def _in_lane(body: str, lane: str | None) -> str:
    if lane is None:
        return body
    return ('    <bpmn:laneSet id="ls"><bpmn:lane id="lane_1" name="' + lane + '">'
            "<bpmn:flowNodeRef>a</bpmn:flowNodeRef></bpmn:lane></bpmn:laneSet>\n" + body)


def test_the_diff_names_the_sla_policy_a_step_gains_or_loses(db, rt, people):
    with db.transaction() as s:
        sla_admin.upsert_policy(s, rt, actor=people.owner, data={
            "key": "p.counter", "name": "柜台", "process_key": "p", "lane": "柜台", "target_amount": 1,
            "target_unit": "CD", "milestones": []})
    steps = linear(("a", user_task("a", name="登记")))
    _deploy(db, rt, process(_in_lane(steps, "柜台")), people.owner)
    with db.transaction() as s:
        _, _, found = version_diff.diff(s, rt, "p", actor=people.owner, draft_xml=process(steps).encode())
    [change] = found.changes
    assert change.element_id == "a"
    assert [f.field for f in change.changes] == ["lane", "sla"]
    assert "SLA 策略：p.counter → （无）" in change.words().zh


def test_the_diff_names_the_policy_a_step_chooses_by_name_over_the_matching_one(db, rt, people):
    with db.transaction() as s:
        for key, lane in (("p.counter", "柜台"), ("p.fast", None)):
            sla_admin.upsert_policy(s, rt, actor=people.owner, data={
                "key": key, "name": key, "process_key": "p", "lane": lane, "element_id": None if lane else "zz",
                "target_amount": 1, "target_unit": "CD", "milestones": []})
    steps = linear(("a", user_task("a", name="登记")))
    _deploy(db, rt, process(_in_lane(steps, "柜台")), people.owner)
    named = steps.replace('camunda:formKey="any" />',
                          'camunda:formKey="any"><bpmn:extensionElements><camunda:properties>'
                          '<camunda:property name="slaPolicy" value="p.fast"/></camunda:properties>'
                          "</bpmn:extensionElements></bpmn:userTask>")
    assert "p.fast" in named
    with db.transaction() as s:
        _, _, found = version_diff.diff(s, rt, "p", actor=people.owner,
                                        draft_xml=process(_in_lane(named, "柜台")).encode())
    [change] = found.changes
    assert [f.field for f in change.changes] == ["property:slaPolicy", "sla"]
    assert "SLA 策略：p.counter → p.fast" in change.words().zh


def test_a_claim_is_kept_while_the_holder_may_still_take_the_step_and_released_otherwise(db, rt, people):
    _deploy(db, rt, V1, people.owner)
    kept, released = _start(db, rt, people.clerk, "M-81"), _start(db, rt, people.clerk, "M-82")
    for case in (kept, released):
        with db.transaction() as s:
            tasks.claim(s, rt, task_id=_open(db, case)[0][0], actor=people.clerk)
    _deploy(db, rt, V1.replace('name="登记"', 'name="登记受理"'), people.owner)  # still the clerks'
    _deploy(db, rt, V2, people.owner)  # 登记 goes to the managers
    with db.transaction() as s:
        assert migration.migrate(s, rt, instance_id=kept, process_key="p", to_version=2, actor=people.owner).moved
        moved = migration.migrate(s, rt, instance_id=released, process_key="p", to_version=3, actor=people.owner)
    assert any("处理人：li → （待认领）" in w.zh for w in moved.changes), moved.changes
    with db.transaction() as s:
        rows = {t.instance_id: t for t in s.execute(select(Task).where(Task.element_id == "a")).scalars()}
        assert (rows[kept].assignee, rows[kept].status, rows[kept].name) == ("li", "claimed", "登记受理")
        assert (rows[released].assignee, rows[released].status) == (None, "open")


def test_a_case_waiting_for_a_message_moves_and_the_message_completes_it_on_version_2(db, rt, people):
    deploy_fixture(db, rt, "review", people.owner)
    with db.transaction() as s:
        case = instances.start(s, rt, process_key="review", business_key="R-M", actor=people.clerk,
                               data={"priority": 50, "due_at": None}).id
    for data in ({"amount": 100, "summary": "小额"}, {"approved": True}):
        with db.transaction() as s:
            tasks.complete(s, rt, task_id=_open(db, case)[0][0], actor=people.clerk, data=data)
    with db.transaction() as s:
        [(before_due,)] = s.execute(select(Timer.due_at).where(Timer.instance_id == case, Timer.kind == TimerKind.BPMN,
                                                               Timer.status == TimerStatus.WAITING)).all()
    bundle = fixture_bundle("review")
    bundle.bpmn["review.bpmn"] = bundle.bpmn["review.bpmn"].replace("完成".encode(), "已完成".encode())
    with db.transaction() as s:
        assert deployments.deploy(s, rt, bundle, actor=people.owner)[0].version.version == 2
        assert migration.migrate(s, rt, instance_id=case, process_key="review", to_version=2,
                                 actor=people.owner).moved
    with db.transaction() as s:
        subscription = s.execute(select(MessageSubscription).where(MessageSubscription.instance_id == case)) \
            .scalar_one()
        assert (subscription.message_name, subscription.correlation_key) == ("client_ack", "R-M")
        assert s.execute(select(Timer.due_at).where(Timer.instance_id == case, Timer.kind == TimerKind.BPMN,
                                                    Timer.status == TimerStatus.WAITING)).scalars().all() \
            == [before_due]
    with db.transaction() as s:
        messages.correlate(s, rt, name="client_ack", correlation_key="R-M", actor=people.system)
    with db.transaction() as s:
        instance = s.get(ProcessInstance, case)
        assert instance.status == InstanceStatus.COMPLETED
        assert s.get(ProcessVersion, instance.process_version_id).version == 2
