"""Moving a case that is inside parallel branches, an inclusive gateway's branches or a
called process: each branch keeps its state, the join fires once and the case finishes on
the new version; a new version whose join would wait for a branch the case can no longer
reach is refused, and the case carries on, untouched, on the old one."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from engine.access import identity
from engine.bpmn import bundle as bundles
from engine.config import PROJECT_ROOT
from engine.errors import DeploymentRejected
from engine.models import AuditEvent, InstanceStatus, MessageSubscription, ProcessInstance, ProcessVersion, Task
from engine.process import deployments, instances, migration, tasks
from tests.support.bpmn import bundle_of, flow, process, user_task


def _parallel(*, a_name="甲", b_groups="clerks", a_then=None, extra_branch=False, gateway="parallelGateway",
              conditions=False):
    """start -> split -> 甲 (a) and 乙 (b) -> join 汇合 -> 合并后 (c, the managers') -> end.
    ``a_then`` puts a step a2 of that name between 甲 and the join; ``extra_branch`` adds a
    third branch 丙 (d) from the split to the join; ``conditions`` guards a and b by the
    variables go_a and go_b (for an inclusive gateway)."""
    body = ('    <bpmn:startEvent id="start"/>\n'
            f'    <bpmn:{gateway} id="split"/>\n    <bpmn:{gateway} id="join" name="汇合"/>\n'
            + user_task("a", name=a_name) + user_task("b", name="乙", groups=b_groups)
            + user_task("c", name="合并后", groups="managers") + '    <bpmn:endEvent id="end"/>\n'
            + flow("start", "split") + flow("split", "a", condition="${go_a}" if conditions else None)
            + flow("split", "b", condition="${go_b}" if conditions else None)
            + flow("b", "join") + flow("join", "c") + flow("c", "end"))
    if a_then is None:
        body += flow("a", "join")
    else:
        body += user_task("a2", name=a_then) + flow("a", "a2") + flow("a2", "join")
    if extra_branch:
        body += (user_task("d", name="丙") + flow("split", "d", condition="${go_a}" if conditions else None)
                 + flow("d", "join"))
    return process(body)


def _deploy(db, rt, owner, xml, *, files=None):
    bundle = bundle_of(xml)
    if files:
        bundle.bpmn.update({name: text.encode("utf-8") for name, text in files.items()})
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle, actor=owner)


def _start(db, rt, clerk, key, data=None):
    with db.transaction() as s:
        return instances.start(s, rt, process_key="p", business_key=key, actor=clerk, data=data or {}).id


def _open(db, case):
    """The case's open steps: (row id, element id, name, candidate groups, task uuid)."""
    with db.transaction() as s:
        return [(t.id, t.element_id, t.name, t.candidate_groups, t.task_uuid) for t in s.execute(
            select(Task).where(Task.instance_id == case, Task.status.in_(("open", "claimed"))).order_by(Task.id))
            .scalars()]


def _complete(db, rt, case, element, actor):
    [task_id] = [row[0] for row in _open(db, case) if row[1] == element]
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=task_id, actor=actor, data={})


def _state(db, case):
    with db.transaction() as s:
        instance = s.get(ProcessInstance, case)
        return instance.status, s.get(ProcessVersion, instance.process_version_id).version, instance.state


def _finish_on(db, rt, people, case, version, *, remaining):
    """Complete ``remaining`` (element ids, in order), then 合并后 exactly once; the case
    ends on ``version``."""
    for element in remaining:
        _complete(db, rt, case, element, people.clerk)
    # The join fired once: one 合并后, and nothing else open.
    assert [row[1] for row in _open(db, case)] == ["c"]
    _complete(db, rt, case, "c", people.manager)
    assert _open(db, case) == []
    status, on, _ = _state(db, case)
    assert (status, on) == (InstanceStatus.COMPLETED, version)
    with db.transaction() as s:
        assert len(s.execute(select(Task).where(Task.instance_id == case, Task.element_id == "c")).all()) == 1


def _dry_run(db, rt, people, case, version):
    with db.transaction() as s:
        return migration.dry_run(s, rt, instance_id=case, process_key="p", to_version=version, actor=people.owner)


def _migrate(db, rt, people, case, version):
    with db.transaction() as s:
        return migration.migrate(s, rt, instance_id=case, process_key="p", to_version=version, actor=people.owner)


def test_both_branches_waiting_move_keep_their_rows_and_the_join_fires_once(db, rt, people):
    _deploy(db, rt, people.owner, _parallel())
    case = _start(db, rt, people.clerk, "P-1")
    before = {row[1]: row for row in _open(db, case)}
    assert set(before) == {"a", "b"}
    _deploy(db, rt, people.owner, _parallel(a_name="甲（新）", b_groups="managers"))

    planned = _dry_run(db, rt, people, case, 2)
    assert planned.can_move and planned.reasons == [], planned.reasons
    assert any("候选组：clerks → managers" in w.zh for w in planned.changes), planned.changes
    assert _migrate(db, rt, people, case, 2).moved
    after = {row[1]: row for row in _open(db, case)}
    assert set(after) == {"a", "b"}
    # The same rows (same uuids), projected again from version 2.
    assert {e: (r[0], r[4]) for e, r in after.items()} == {e: (r[0], r[4]) for e, r in before.items()}
    assert (after["a"][2], after["b"][3]) == ("甲（新）", ["managers"])
    _complete(db, rt, case, "b", people.manager)
    _finish_on(db, rt, people, case, 2, remaining=["a"])


def test_a_branch_waiting_at_the_join_keeps_its_token_and_the_join_fires_once_on_version_2(db, rt, people):
    _deploy(db, rt, people.owner, _parallel())
    case = _start(db, rt, people.clerk, "P-2")
    _complete(db, rt, case, "a", people.clerk)  # 甲 is done: its token waits at the join
    [(b_row, _, _, _, b_uuid)] = _open(db, case)
    _deploy(db, rt, people.owner, _parallel(b_groups="managers"))

    assert _dry_run(db, rt, people, case, 2).can_move
    assert _migrate(db, rt, people, case, 2).moved
    # 甲 is not offered again, 乙 is the same row with version 2's groups.
    assert [(r[0], r[1], r[3], r[4]) for r in _open(db, case)] == [(b_row, "b", ["managers"], b_uuid)]
    _complete(db, rt, case, "b", people.manager)
    _finish_on(db, rt, people, case, 2, remaining=[])


def test_a_step_added_on_a_branch_still_running_moves_and_is_done_before_the_join(db, rt, people):
    _deploy(db, rt, people.owner, _parallel())
    case = _start(db, rt, people.clerk, "P-3")
    _deploy(db, rt, people.owner, _parallel(a_then="甲复核"))
    assert _migrate(db, rt, people, case, 2).moved
    _complete(db, rt, case, "a", people.clerk)
    assert sorted(row[1] for row in _open(db, case)) == ["a2", "b"]
    _complete(db, rt, case, "b", people.clerk)
    assert [row[1] for row in _open(db, case)] == ["a2"]  # the join waits for 甲复核
    _finish_on(db, rt, people, case, 2, remaining=["a2"])


def _assert_refused_and_untouched(db, rt, people, case, version, code, words):
    status, on, state = _state(db, case)
    rows = _open(db, case)
    planned = _dry_run(db, rt, people, case, version)
    assert not planned.can_move and code in [r.code for r in planned.reasons], planned.reasons
    reason = next(r for r in planned.reasons if r.code == code)
    assert all(w in reason.words.zh or w in reason.words.en for w in words), reason.words
    refused = _migrate(db, rt, people, case, version)
    assert not refused.moved
    assert _state(db, case) == (status, on, state) and _open(db, case) == rows
    with db.transaction() as s:
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "instance.migration_refused",
                                                   AuditEvent.instance_id == case)).scalar_one()
        assert code in event.data["reasons"]


def test_a_step_added_after_a_branch_whose_token_is_at_the_join_is_refused(db, rt, people):
    # 甲 is done and its token is at the join; version 2 puts 甲复核 between 甲 and the join,
    # so the join would wait for 甲复核, which this case never reaches.
    _deploy(db, rt, people.owner, _parallel())
    case = _start(db, rt, people.clerk, "P-4")
    _complete(db, rt, case, "a", people.clerk)
    _deploy(db, rt, people.owner, _parallel(a_then="甲复核"))
    _assert_refused_and_untouched(db, rt, people, case, 2, "join_unreachable", ["汇合", "甲复核"])
    _finish_on(db, rt, people, case, 1, remaining=["b"])


def test_a_branch_added_to_a_split_the_case_has_passed_is_refused(db, rt, people):
    _deploy(db, rt, people.owner, _parallel())
    waiting_both, one_done = _start(db, rt, people.clerk, "P-5"), _start(db, rt, people.clerk, "P-6")
    _complete(db, rt, one_done, "a", people.clerk)
    _deploy(db, rt, people.owner, _parallel(extra_branch=True))
    for case in (waiting_both, one_done):
        _assert_refused_and_untouched(db, rt, people, case, 2, "join_unreachable", ["汇合", "丙"])
    _finish_on(db, rt, people, waiting_both, 1, remaining=["a", "b"])
    _finish_on(db, rt, people, one_done, 1, remaining=["b"])
    # A case started on version 2 runs all three branches.
    new = _start(db, rt, people.clerk, "P-7")
    assert sorted(row[1] for row in _open(db, new)) == ["a", "b", "d"]


def _without_b():
    """Version 2 without 乙: the split leads to 甲 alone."""
    return process('    <bpmn:startEvent id="start"/>\n'
                   '    <bpmn:parallelGateway id="split"/>\n    <bpmn:parallelGateway id="join" name="汇合"/>\n'
                   + user_task("a", name="甲") + user_task("c", name="合并后", groups="managers")
                   + '    <bpmn:endEvent id="end"/>\n' + flow("start", "split") + flow("split", "a")
                   + flow("a", "join") + flow("join", "c") + flow("c", "end"))


def test_a_branch_whose_step_is_removed_is_refused_whether_it_is_waiting_or_passed(db, rt, people):
    _deploy(db, rt, people.owner, _parallel())
    waiting_both, a_done = _start(db, rt, people.clerk, "P-8"), _start(db, rt, people.clerk, "P-9")
    _complete(db, rt, a_done, "a", people.clerk)
    _deploy(db, rt, people.owner, _without_b())
    _assert_refused_and_untouched(db, rt, people, waiting_both, 2, "active_step_removed", ["「乙」"])
    _assert_refused_and_untouched(db, rt, people, a_done, 2, "active_step_removed", ["「乙」"])
    b_done = _start(db, rt, people.clerk, "P-10")  # started on version 2: 甲 only
    assert [row[1] for row in _open(db, b_done)] == ["a"]
    _finish_on(db, rt, people, waiting_both, 1, remaining=["a", "b"])
    _finish_on(db, rt, people, a_done, 1, remaining=["b"])


def test_a_passed_branch_step_removed_is_refused(db, rt, people):
    _deploy(db, rt, people.owner, _parallel())
    case = _start(db, rt, people.clerk, "P-11")
    _complete(db, rt, case, "b", people.clerk)  # 乙 passed, its token at the join; 甲 waits
    _deploy(db, rt, people.owner, _without_b())
    _assert_refused_and_untouched(db, rt, people, case, 2, "passed_step_removed", ["「乙」"])
    _finish_on(db, rt, people, case, 1, remaining=["a"])


def test_an_inclusive_join_with_one_branch_arrived_moves_and_fires_once(db, rt, people):
    _deploy(db, rt, people.owner, _parallel(gateway="inclusiveGateway", conditions=True))
    case = _start(db, rt, people.clerk, "P-12", data={"go_a": True, "go_b": True})
    _complete(db, rt, case, "a", people.clerk)
    _deploy(db, rt, people.owner, _parallel(gateway="inclusiveGateway", conditions=True, b_groups="managers"))
    assert _migrate(db, rt, people, case, 2).moved
    assert [(r[1], r[3]) for r in _open(db, case)] == [("b", ["managers"])]
    _complete(db, rt, case, "b", people.manager)
    _finish_on(db, rt, people, case, 2, remaining=[])


def test_an_inclusive_join_does_not_wait_for_a_branch_added_after_the_split(db, rt, people):
    # Unlike a parallel join, an inclusive join waits only for branches a token can still
    # reach: a branch the case's split never took is not waited for.
    _deploy(db, rt, people.owner, _parallel(gateway="inclusiveGateway", conditions=True))
    case = _start(db, rt, people.clerk, "P-13", data={"go_a": True, "go_b": True})
    _complete(db, rt, case, "a", people.clerk)
    _deploy(db, rt, people.owner, _parallel(gateway="inclusiveGateway", conditions=True, extra_branch=True))
    assert _migrate(db, rt, people, case, 2).moved
    _finish_on(db, rt, people, case, 2, remaining=["b"])


def test_a_gateway_that_changes_kind_under_a_waiting_token_is_refused(db, rt, people):
    _deploy(db, rt, people.owner, _parallel())
    case = _start(db, rt, people.clerk, "P-14", data={"go_a": True, "go_b": True})
    _complete(db, rt, case, "a", people.clerk)
    _deploy(db, rt, people.owner, _parallel(gateway="inclusiveGateway", conditions=True))
    _assert_refused_and_untouched(db, rt, people, case, 2, "step_kind_changed", ["汇合"])
    _finish_on(db, rt, people, case, 1, remaining=["b"])


def _caller(*, called="q"):
    """p: start -> 调用 (a call activity of ``called``) -> 合并后 (c) -> end."""
    return process('    <bpmn:startEvent id="start"/>\n'
                   f'    <bpmn:callActivity id="call" name="调用核查" calledElement="{called}"/>\n'
                   + user_task("c", name="合并后", groups="managers") + '    <bpmn:endEvent id="end"/>\n'
                   + flow("start", "call") + flow("call", "c") + flow("c", "end"))


def _called(*, x_groups="clerks", extra_branch=False, without_y=False):
    """q: start -> split -> 核查 (x) and 记录 (y) -> join 汇合 -> end."""
    body = ('    <bpmn:startEvent id="q_start"/>\n'
            '    <bpmn:parallelGateway id="q_split"/>\n    <bpmn:parallelGateway id="q_join" name="核查汇合"/>\n'
            + user_task("x", name="核查", groups=x_groups) + '    <bpmn:endEvent id="q_end"/>\n'
            + flow("q_start", "q_split") + flow("q_split", "x") + flow("x", "q_join") + flow("q_join", "q_end"))
    if not without_y:
        body += user_task("y", name="记录") + flow("q_split", "y") + flow("y", "q_join")
    if extra_branch:
        body += user_task("z", name="补充") + flow("q_split", "z") + flow("z", "q_join")
    return process(body, key="q", name="核查子流程")


def _deploy_pair(db, rt, owner, caller, called):
    return _deploy(db, rt, owner, caller, files={"q.bpmn": called})


def test_a_case_inside_a_called_process_moves_with_its_branches_and_finishes_on_version_2(db, rt, people):
    _deploy_pair(db, rt, people.owner, _caller(), _called())
    case = _start(db, rt, people.clerk, "P-20")
    _complete(db, rt, case, "y", people.clerk)  # 记录 done, its token at the called process's join
    [(x_row, _, _, _, x_uuid)] = _open(db, case)
    _deploy_pair(db, rt, people.owner, _caller(), _called(x_groups="managers"))

    planned = _dry_run(db, rt, people, case, 2)
    assert planned.can_move, planned.reasons
    assert any("候选组：clerks → managers" in w.zh for w in planned.changes), planned.changes
    assert _migrate(db, rt, people, case, 2).moved
    assert [(r[0], r[1], r[3], r[4]) for r in _open(db, case)] == [(x_row, "x", ["managers"], x_uuid)]
    _complete(db, rt, case, "x", people.manager)
    _finish_on(db, rt, people, case, 2, remaining=[])


def test_a_case_inside_a_called_process_is_refused_when_its_step_or_the_call_goes(db, rt, people):
    _deploy_pair(db, rt, people.owner, _caller(), _called())
    case = _start(db, rt, people.clerk, "P-21")
    _deploy_pair(db, rt, people.owner, _caller(), _called(without_y=True))
    _assert_refused_and_untouched(db, rt, people, case, 2, "active_step_removed", ["「记录」"])
    # Version 3 calls no process at all: the case is inside the call it would lose.
    _deploy(db, rt, people.owner, process('    <bpmn:startEvent id="start"/>\n'
                                          + user_task("c", name="合并后", groups="managers")
                                          + '    <bpmn:endEvent id="end"/>\n' + flow("start", "c")
                                          + flow("c", "end")))
    planned = _dry_run(db, rt, people, case, 3)
    assert not planned.can_move
    assert {"active_step_removed", "subprocess_removed"} <= {r.code for r in planned.reasons}, planned.reasons
    assert any("调用核查" in r.words.zh for r in planned.reasons)
    _finish_on(db, rt, people, case, 1, remaining=["x", "y"])


def test_a_branch_added_inside_a_called_process_the_case_is_in_is_refused(db, rt, people):
    _deploy_pair(db, rt, people.owner, _caller(), _called())
    case = _start(db, rt, people.clerk, "P-22")
    _complete(db, rt, case, "y", people.clerk)
    _deploy_pair(db, rt, people.owner, _caller(), _called(extra_branch=True))
    _assert_refused_and_untouched(db, rt, people, case, 2, "join_unreachable", ["核查汇合", "补充"])
    _finish_on(db, rt, people, case, 1, remaining=["x"])


def test_a_change_to_a_called_process_alone_is_a_new_version_of_its_caller(db, rt, people):
    # The caller's version holds the called process's spec: without a new caller version a
    # changed called process would reach neither new cases nor a migration.
    with db.transaction() as s:
        first = deployments.deploy(s, rt, _pair_bundle(_called()), actor=people.owner)
    assert sorted((d.version.process_key, d.version.version, d.created) for d in first) \
        == [("p", 1, True), ("q", 1, True)]
    with db.transaction() as s:
        again = deployments.deploy(s, rt, _pair_bundle(_called()), actor=people.owner)
    assert not any(d.created for d in again)
    with db.transaction() as s:
        changed = deployments.deploy(s, rt, _pair_bundle(_called(x_groups="managers")), actor=people.owner)
    assert sorted((d.version.process_key, d.version.version, d.created) for d in changed) \
        == [("p", 2, True), ("q", 2, True)]
    case = _start(db, rt, people.clerk, "P-23")
    assert {r[1]: r[3] for r in _open(db, case)} == {"x": ["managers"], "y": ["clerks"]}


def _pair_bundle(called):
    bundle = bundle_of(_caller())
    bundle.bpmn["q.bpmn"] = called.encode("utf-8")
    return bundle


def test_the_demo_transfer_in_both_tracks_of_the_retention_process_moves_and_keeps_both(db, rt, demo_cases_loaded):
    # The shipped retention process: both tracks of 并行办理 open inside the embedded
    # subprocess, each step with a boundary event, the client's withdrawal awaited.
    key = demo_cases_loaded["RET-20250616-0002"]
    with db.transaction() as s:
        owner = identity.actor_for(s, identity.get_user(s, "s001"))
        case = s.execute(select(ProcessInstance.id).where(ProcessInstance.business_key == key)).scalar_one()
    before = {row[1]: row for row in _open(db, case)}
    assert set(before) == {"retention_conversation", "submit_instructions"}
    bundle = bundles.from_paths([PROJECT_ROOT / "workflows"])
    step = 'id="retention_conversation" name="挽留沟通'
    xml = bundle.bpmn["retention.bpmn"]
    bundle.bpmn["retention.bpmn"] = xml.replace(f'{step}"'.encode(), f'{step}（录音）"'.encode())
    with db.transaction() as s:
        [deployed] = deployments.deploy(s, rt, bundle, actor=owner, only="retention")
        moved = migration.migrate(s, rt, instance_id=case, process_key="retention",
                                  to_version=deployed.version.version, actor=owner)
    assert moved.moved, moved.reasons
    after = {row[1]: row for row in _open(db, case)}
    assert {e: (r[0], r[4]) for e, r in after.items()} == {e: (r[0], r[4]) for e, r in before.items()}
    assert after["retention_conversation"][2] == "挽留沟通（录音）"
    with db.transaction() as s:
        assert s.execute(select(MessageSubscription.message_name)
                         .where(MessageSubscription.instance_id == case)).scalars().all() \
            == ["retention_client_withdraws"]


def test_rolling_back_a_caller_whose_called_process_is_in_another_file_is_refused_by_name(db, rt, people):
    """A version keeps its own file only: deploying it again cannot bring back the called
    process's file, and the deploy check says which process it could not find (a 422 over
    the API, never a failed request)."""
    _deploy_pair(db, rt, people.owner, _caller(), _called())
    _deploy_pair(db, rt, people.owner, _caller(), _called(x_groups="managers"))
    with pytest.raises(DeploymentRejected) as refused, db.transaction() as s:
        deployments.redeploy(s, rt, "p", 1, actor=people.owner, reason="恢复")
    assert any("'q'" in p.message for p in refused.value.problems), refused.value.problems
    with db.transaction() as s:
        assert deployments.get_latest(s, "p").version == 2
