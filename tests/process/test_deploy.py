"""Deploying bundles: version numbering, idempotence, immutability, permissions, starting."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from engine.errors import DuplicateBusinessKey, InvalidInput, PermissionDenied, ProcessNotFound
from engine.models import AuditEvent, Deployment, ProcessInstance, ProcessVersion, Task
from engine.process import deployments, instances, messages, tasks
from tests.conftest import deploy_fixture
from tests.support.bpmn import (
    bundle_of,
    fixture_bundle,
    linear,
    process,
    row_counts,
    user_task,
)

pytestmark = pytest.mark.sqlite


OTHER = process(linear(("note", user_task("note", name="记录"))), key="other", name="其他流程")


def _deploy(db, rt, bundle, actor):
    with db.transaction() as s:
        return deployments.deploy(s, rt, bundle, actor=actor)


def _open_task(db, actor, business_key):
    with db.transaction() as s:
        rows, _ = tasks.inbox(s, actor=actor, query=tasks.InboxQuery(business_key=business_key), now=datetime.now(UTC))
        assert len(rows) == 1, rows
        return rows[0]


def _review_changed(**replacements: str):
    bundle = fixture_bundle("review")
    xml = bundle.bpmn["review.bpmn"].decode()
    for old, new in replacements.items():
        assert old in xml
        xml = xml.replace(old, new)
    bundle.bpmn["review.bpmn"] = xml.encode()
    return bundle


def test_versions_are_numbered_per_process_key(db, rt, people):
    first = deploy_fixture(db, rt, "review", people.owner)
    other = _deploy(db, rt, bundle_of(OTHER), people.owner)
    second = _deploy(db, rt, _review_changed(**{"登记": "登记 v2"}), people.owner)

    assert [(d.version.process_key, d.version.version, d.created) for d in first] == [("review", 1, True)]
    assert [(d.version.process_key, d.version.version, d.created) for d in other] == [("other", 1, True)]
    assert [(d.version.process_key, d.version.version, d.created) for d in second] == [("review", 2, True)]
    with db.transaction() as s:
        listed = [(v.process_key, v.version) for v in deployments.get_all(s)]
        assert listed == [("other", 1), ("review", 2), ("review", 1)]
        assert deployments.get_latest(s, "review").id == second[0].version.id
        assert second[0].version.sha256 != first[0].version.sha256


def test_identical_bundle_creates_no_new_version(db, rt, people):
    first = deploy_fixture(db, rt, "review", people.owner)
    before = row_counts(db)
    again = deploy_fixture(db, rt, "review", people.owner)

    assert [d.created for d in again] == [False]
    assert again[0].version.id == first[0].version.id
    assert again[0].version.version == 1
    # Not even a deployment row or an audit event for a no-op deploy.
    assert row_counts(db) == before


def test_a_form_not_used_by_the_diagram_does_not_make_a_new_version(db, rt, people):
    deploy_fixture(db, rt, "review", people.owner)
    bundle = fixture_bundle("review")
    bundle.forms["unused"] = {"type": "object"}
    again = _deploy(db, rt, bundle, people.owner)
    assert [d.created for d in again] == [False]


def test_changed_xml_makes_a_new_version(db, rt, people):
    deploy_fixture(db, rt, "review", people.owner)
    changed = _deploy(db, rt, _review_changed(**{"P15D": "P10D"}), people.owner)
    assert [(d.version.version, d.created) for d in changed] == [(2, True)]
    assert "P10D" in changed[0].version.bpmn_xml


def test_changed_form_makes_a_new_version(db, rt, people):
    deploy_fixture(db, rt, "review", people.owner)
    bundle = fixture_bundle("review")
    bundle.forms["approve"]["properties"]["comment"]["maxLength"] = 2000
    changed = _deploy(db, rt, bundle, people.owner)
    assert [(d.version.version, d.created) for d in changed] == [(2, True)]
    assert changed[0].version.forms["approve"]["properties"]["comment"]["maxLength"] == 2000
    with db.transaction() as s:
        v1 = s.execute(select(ProcessVersion).where(ProcessVersion.version == 1)).scalar_one()
        assert v1.forms["approve"]["properties"]["comment"]["maxLength"] == 1000


def test_a_running_instance_keeps_its_version_and_completes_on_it(db, rt, people):
    (v1,) = deploy_fixture(db, rt, "review", people.owner)
    with db.transaction() as s:
        old = instances.start(s, rt, process_key="review", business_key="R-OLD", actor=people.clerk,
                              data={"priority": 50, "due_at": None})
    # Version 2 sends everything above 10 to the manager and renames the clerk's approval.
    (v2,) = _deploy(db, rt, _review_changed(**{"amount &gt; 50000": "amount &gt; 10", "组长审批": "组长复核"}),
                    people.owner)
    assert v2.created and v2.version.version == 2

    register = _open_task(db, people.clerk, "R-OLD")
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=register.id, actor=people.clerk, data={"amount": 100, "summary": "小额"})
    approve = _open_task(db, people.clerk, "R-OLD")
    assert (approve.element_id, approve.name) == ("approve_small", "组长审批")  # version 1's rule and name
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=approve.id, actor=people.clerk, data={"approved": True})
    with db.transaction() as s:
        messages.correlate(s, rt, name="client_ack", correlation_key="R-OLD", actor=people.system)
    with db.transaction() as s:
        finished = instances.get(s, old.id, actor=people.supervisor)
        assert finished.status == "completed"
        assert finished.process_version_id == v1.version.id

    # A new instance gets version 2's behaviour for the same input.
    with db.transaction() as s:
        new = instances.start(s, rt, process_key="review", business_key="R-NEW", actor=people.clerk,
                              data={"priority": 50, "due_at": None})
        assert new.process_version_id == v2.version.id
    register = _open_task(db, people.clerk, "R-NEW")
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=register.id, actor=people.clerk, data={"amount": 100, "summary": "小额"})
    with db.transaction() as s:
        rows, _ = tasks.inbox(s, actor=people.manager, query=tasks.InboxQuery(business_key="R-NEW"),
                              now=datetime.now(UTC))
        assert [t.element_id for t in rows] == ["approve_big"]


def test_deploy_requires_the_process_owner_role(db, rt, people):
    before = row_counts(db)
    for actor in (people.clerk, people.supervisor, people.outsider):
        with pytest.raises(PermissionDenied), db.transaction() as s:
            deployments.deploy(s, rt, fixture_bundle("review"), actor=actor)
    assert row_counts(db) == before
    # The administrator may (admins hold every role), and so may the process owner.
    assert [d.created for d in _deploy(db, rt, fixture_bundle("review"), people.system)] == [True]


def test_deploy_is_recorded_in_the_system_audit_stream(db, rt, people):
    (deployed,) = deploy_fixture(db, rt, "review", people.owner)
    with db.transaction() as s:
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "process.deployed")).scalar_one()
        assert event.stream == "system" and event.actor == "owner"
        assert event.data["process_key"] == "review" and event.data["version"] == 1
        assert event.data["sha256"] == deployed.version.sha256
        deployment = s.get(Deployment, deployed.version.deployment_id)
        assert deployment is not None and deployment.deployed_by == "owner"
        assert "review.bpmn" in deployment.files and "forms/register.json" in deployment.files


def test_start_with_an_unknown_process_key_raises_process_not_found(db, rt, people, review):
    before = row_counts(db)
    with pytest.raises(ProcessNotFound), db.transaction() as s:
        instances.start(s, rt, process_key="no_such_process", business_key="X-1", actor=people.clerk)
    assert row_counts(db) == before


def test_start_without_a_business_key_is_invalid(db, rt, people, review):
    with pytest.raises(InvalidInput), db.transaction() as s:
        instances.start(s, rt, process_key="review", business_key="", actor=people.clerk)


def test_duplicate_business_key_is_refused_per_process(db, rt, people, review):
    _deploy(db, rt, bundle_of(OTHER), people.owner)
    with db.transaction() as s:
        first = instances.start(s, rt, process_key="review", business_key="R-1", actor=people.clerk,
                                data={"priority": 50, "due_at": None})
    before = row_counts(db)
    with pytest.raises(DuplicateBusinessKey) as caught, db.transaction() as s:
        instances.start(s, rt, process_key="review", business_key="R-1", actor=people.clerk,
                        data={"priority": 50, "due_at": None})
    assert caught.value.details["instance_id"] == first.id
    assert row_counts(db) == before
    # The same business key in another process is a different case.
    with db.transaction() as s:
        instances.start(s, rt, process_key="other", business_key="R-1", actor=people.clerk)
        keys = s.execute(select(ProcessInstance.process_key).where(ProcessInstance.business_key == "R-1")).scalars()
        assert sorted(keys) == ["other", "review"]
        assert s.execute(select(Task.process_key).where(Task.business_key == "R-1")).scalars().all()


def test_a_script_task_runs_where_the_setting_allows_script_tasks(db, settings, people):
    """BPM_ALLOW_SCRIPT_TASKS lets such a diagram deploy and its script run as the case reaches it."""
    from dataclasses import replace

    from engine.bootstrap import build_runtime

    rt = build_runtime(replace(settings, allow_script_tasks=True))
    script = ('    <bpmn:scriptTask id="calc" name="计算"><bpmn:script>total = amount * 2</bpmn:script>'
              "</bpmn:scriptTask>\n")
    _deploy(db, rt, bundle_of(process(linear(("calc", script), ("check", user_task("check"))), key="scripted")),
            people.owner)
    with db.transaction() as s:
        instance = instances.start(s, rt, process_key="scripted", business_key="S-1", actor=people.clerk,
                                   data={"amount": 21})
        assert instance.status == "running"
        assert instances.data_of(s, rt, instance)["total"] == 42
    assert _open_task(db, people.clerk, "S-1").element_id == "check"
