"""The diff and migration endpoints: a process owner compares a draft or a version with the
deployed one and moves cases (dry run, then for real); every bad input is a 4xx with its
reason; anyone else gets 403. And ``bpm migrate`` does the same from a terminal."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from engine.models import ProcessInstance, ProcessVersion
from engine.process import deployments, instances
from tests.support.api import API, assert_problem
from tests.support.bpmn import bundle_of, linear, process, user_task
from tests.support.cli import bpm

pytestmark = pytest.mark.sqlite

V1 = process(linear(("a", user_task("a", name="登记")), ("b", user_task("b", name="审批"))))
V2 = process(linear(("a", user_task("a", name="登记", groups="managers")), ("b", user_task("b", name="审批"))))
V2_WITHOUT_A = process(linear(("b", user_task("b", name="审批"))))


@pytest.fixture
def two_cases(db, rt, people):
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(V1), actor=people.owner)
        ids = [instances.start(s, rt, process_key="p", business_key=f"API-{i}", actor=people.clerk).id
               for i in range(2)]
    return ids


def _version(db, instance_id):
    with db.transaction() as s:
        return s.get(ProcessVersion, s.get(ProcessInstance, instance_id).process_version_id).version


def _deploy(db, rt, people, xml):
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(xml), actor=people.owner)


def test_an_owner_compares_a_draft_and_a_version_with_the_deployed_one(client, auth, db, rt, people, two_cases):
    changed = V1.replace('name="审批"', 'name="复核"')
    answer = client.post(f"{API}/processes/p/diff", data=changed.encode(),
                         headers={**auth("owner"), "Content-Type": "application/xml"})
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert (body["against_version"], body["compared"], body["changed"], body["added"]) == (1, "draft", 1, 0)
    [change] = body["changes"]
    assert change["element_id"] == "b" and change["kind"] == "changed"
    assert change["message"].startswith("修改用户任务「复核」") and change["message_en"].startswith("Changed user task")
    assert change["fields"] == [{"field": "name", "before": "审批", "after": "复核",
                                 "message": "名称：审批 → 复核", "message_en": "name: 审批 → 复核"}]
    _deploy(db, rt, people, V2_WITHOUT_A)
    versions = client.get(f"{API}/processes/p/diff?version=1&against=2", headers=auth("owner")).get_json()
    assert {c["element_id"]: c["kind"] for c in versions["changes"]}["a"] == "added"


def test_an_owner_dry_runs_then_moves_chosen_cases(client, auth, db, rt, people, two_cases):
    _deploy(db, rt, people, V2)
    dry = client.post(f"{API}/processes/p/migrations", json={"to_version": 2}, headers=auth("owner"))
    assert dry.status_code == 200, dry.get_json()
    report = dry.get_json()
    assert (report["dry_run"], report["cases"], report["movable"], report["moved"]) == (True, 2, 2, 0)
    assert any("候选组：clerks → managers" in c["message"] for c in report["outcomes"][0]["changes"])
    assert [_version(db, c) for c in two_cases] == [1, 1]
    done = client.post(f"{API}/processes/p/migrations", headers=auth("owner"),
                       json={"to_version": 2, "dry_run": False, "instance_ids": [two_cases[0]], "batch_size": 1})
    assert done.status_code == 200
    assert (done.get_json()["moved"], done.get_json()["batches"]) == (1, 1)
    assert [_version(db, c) for c in two_cases] == [2, 1]


def test_a_case_that_cannot_move_is_reported_with_its_reason(client, auth, db, rt, people, two_cases):
    _deploy(db, rt, people, V2_WITHOUT_A)
    answer = client.post(f"{API}/processes/p/migrations", headers=auth("owner"),
                         json={"to_version": 2, "dry_run": False, "from_version": 1})
    report = answer.get_json()
    assert (report["moved"], report["refused"]) == (0, 2)
    reason = report["outcomes"][0]["reasons"][0]
    assert reason["code"] == "active_step_removed" and "登记" in reason["message"]
    assert [_version(db, c) for c in two_cases] == [1, 1]
    unknown = client.post(f"{API}/processes/p/migrations", headers=auth("owner"),
                          json={"to_version": 2, "instance_ids": [999999]}).get_json()
    assert unknown["outcomes"][0]["reasons"][0]["code"] == "instance_not_found"


@pytest.mark.parametrize("body, field", [
    ({}, "to_version"),
    ({"to_version": 0}, "to_version"),
    ({"to_version": "two"}, "to_version"),
    ({"to_version": 2, "batch_size": 0}, "batch_size"),
    ({"to_version": 2, "instance_ids": ["x"]}, "instance_ids/0"),
    ({"to_version": 2, "instance_ids": list(range(1, 502))}, "instance_ids"),
    ({"to_version": 2, "dry_run": "maybe"}, "dry_run"),
    ({"to_version": 2, "surprise": 1}, "surprise"),
])
def test_bad_migration_requests_are_422_naming_the_field(client, auth, two_cases, body, field):
    answer = client.post(f"{API}/processes/p/migrations", json=body, headers=auth("owner"))
    problem = assert_problem(answer, 422, "invalid_request")
    assert field in [e["field"] for e in problem["errors"]], problem


def test_unknown_processes_and_versions_are_404(client, auth, two_cases):
    owner = auth("owner")
    assert_problem(client.post(f"{API}/processes/p/migrations", json={"to_version": 9}, headers=owner),
                   404, "process_not_found")
    assert_problem(client.post(f"{API}/processes/nope/migrations", json={"to_version": 1}, headers=owner),
                   404, "process_not_found")
    assert_problem(client.post(f"{API}/processes/p/migrations", json={"to_version": 1, "from_version": 7},
                               headers=owner), 404, "process_not_found")
    assert_problem(client.get(f"{API}/processes/p/diff?version=5", headers=owner), 404, "process_not_found")
    assert_problem(client.get(f"{API}/processes/nope/diff", headers=owner), 404, "process_not_found")
    assert_problem(client.get(f"{API}/processes/p/diff?version=0", headers=owner), 422, "invalid_request")


XXE = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       b'<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL">&x;</bpmn:definitions>')


@pytest.mark.parametrize("body, status, code", [
    (b"<bpmn:definitions", 422, "draft_invalid"),
    (XXE, 422, "draft_invalid"),
    (V1.replace('id="p"', 'id="other"').encode(), 422, "draft_invalid"),
    (b"", 400, "invalid_input"),
])
def test_a_diagram_that_cannot_be_compared_is_refused_with_the_reason(client, auth, two_cases, body, status, code):
    answer = client.post(f"{API}/processes/p/diff", data=body,
                         headers={**auth("owner"), "Content-Type": "application/xml"})
    assert_problem(answer, status, code)


def test_only_process_owners_may_compare_or_move(client, auth, db, rt, people, two_cases):
    _deploy(db, rt, people, V2)
    for who in ("li", "boss"):
        headers = auth(who)
        assert_problem(client.get(f"{API}/processes/p/diff", headers=headers), 403, "forbidden")
        assert_problem(client.post(f"{API}/processes/p/diff", data=V1.encode(),
                                   headers={**headers, "Content-Type": "application/xml"}), 403, "forbidden")
        assert_problem(client.post(f"{API}/processes/p/migrations", json={"to_version": 2, "dry_run": False},
                                   headers=headers), 403, "forbidden")
    assert [_version(db, c) for c in two_cases] == [1, 1]


def test_bpm_migrate_dry_runs_and_moves_from_a_terminal(database_url, db, rt, people, two_cases):
    _deploy(db, rt, people, V2)
    dry = bpm(database_url, "migrate", "p", "--to", "2", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "API-0 v1 -> v2: can move" in dry.output and "2 can move, 0 refused" in dry.output
    assert [_version(db, c) for c in two_cases] == [1, 1]
    moved = bpm(database_url, "migrate", "p", "--to", "2", "--case", str(two_cases[1]), "--as", "owner")
    assert moved.exit_code == 0, moved.output
    assert "API-1 v1 -> v2: moved" in moved.output
    assert [_version(db, c) for c in two_cases] == [1, 2]
    _deploy(db, rt, people, V2_WITHOUT_A)
    refused = bpm(database_url, "migrate", "p", "--to", "3", "--from-version", "1")
    assert refused.exit_code == 1 and "refused: the active step “登记” was removed" in refused.output
    with db.transaction() as s:
        assert s.execute(select(ProcessInstance.process_version_id).where(
            ProcessInstance.id == two_cases[0])).scalar_one() is not None
    assert [_version(db, c) for c in two_cases] == [1, 2]
