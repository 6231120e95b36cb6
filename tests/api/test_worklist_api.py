"""What the worklist pages do, over the API for other clients: the inbox's filters and sorts,
claiming several tasks at once, a case's progress on its diagram, the diagram itself, and a
case's comments. Over the demo (s002 is the call-centre supervisor at headquarters, who sees
every task; s003 a call-centre agent; s101 the HZ01 head)."""

from __future__ import annotations

from lxml import etree
from sqlalchemy import func, select

from tests.support.api import API, assert_problem, inbox

BPMN = "{http://www.omg.org/spec/BPMN/20100524/MODEL}"


def _items(client, headers, query=""):
    return inbox(client, headers, f"limit=500&{query}")["items"]


def test_each_inbox_filter_narrows_to_the_tasks_it_names(client, demo_cases_loaded, auth):
    boss = auth("s002")
    every = _items(client, boss)
    assert len(every) > 3
    some = every[0]
    filters = {
        "client_id": ("client_id", lambda t: t["client_id"] == some["client_id"]),
        "element": ("element_id", lambda t: t["element_id"] == some["element_id"]),
        "branch": ("branch_code", lambda t: t["branch_code"] == some["branch_code"]),
        "group": ("candidate_groups", lambda t: some["candidate_groups"][0] in t["candidate_groups"]),
    }
    for name, (attribute, holds) in filters.items():
        value = some[attribute][0] if attribute == "candidate_groups" else some[attribute]
        found = _items(client, boss, f"{name}={value}")
        assert found and all(holds(t) for t in found), name
        assert len(found) < len(every), name  # the demo has tasks on either side of each filter

    at_risk = _items(client, boss, "at_risk=true")
    assert all(t["sla_state"] == "at_risk" for t in at_risk)
    assert {t["id"] for t in at_risk} == {t["id"] for t in every if t["sla_state"] == "at_risk"}


def test_the_inbox_filters_by_a_named_assignee_as_far_as_the_reader_sees(client, demo_cases_loaded, auth):
    held = [t for t in _items(client, auth("s002")) if t["assignee"]]
    assert held, "the demo has claimed tasks"
    person = held[0]["assignee"]
    found = _items(client, auth("s002"), f"assignee={person}")
    assert found and {t["assignee"] for t in found} == {person}
    assert {t["id"] for t in found} == {t["id"] for t in held if t["assignee"] == person}
    # Another branch's clerk sees none of them: the filter narrows their own scope, it does not widen it.
    outsider = [t for t in _items(client, auth("s301"), f"assignee={person}") if t["branch_code"] == "HZ01"]
    assert outsider == []


def test_the_inbox_sorts_by_priority_or_by_creation(client, demo_cases_loaded, auth):
    boss = auth("s002")
    by_priority = _items(client, boss, "sort=priority")
    priorities = [t["priority"] for t in by_priority]
    assert priorities == sorted(priorities, reverse=True) and len(set(priorities)) > 1
    by_created = _items(client, boss, "sort=created")
    created = [t["created_at"] for t in by_created]
    assert created == sorted(created, reverse=True)
    assert [t["id"] for t in by_created] != [t["id"] for t in by_priority]
    body = assert_problem(client.get(f"{API}/tasks?sort=name", headers=boss), 422, "invalid_request")
    assert body["errors"][0]["field"] == "sort"


def _claimable(client, headers):
    return _items(client, headers, "candidate=me")


def test_several_tasks_are_claimed_at_once_each_with_its_own_result(client, demo_cases_loaded, auth):
    agent = auth("s003")
    mine = _claimable(client, agent)
    assert len(mine) >= 2
    first, second = mine[0]["id"], mine[1]["id"]
    # A colleague takes the second one first.
    assert client.post(f"{API}/tasks/{second}/claim", headers=auth("s004"), json={}).status_code == 200
    others = {t["id"] for t in _items(client, auth("s002"))} - {t["id"] for t in _items(client, agent)}
    hidden = min(others)
    answer = client.post(f"{API}/tasks/claim", headers=agent, json={"task_ids": [first, second, first, hidden]})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.json
    results = {r["task_id"]: r for r in body["results"]}
    assert [r["task_id"] for r in body["results"]] == [first, second, hidden]  # each once, in order
    assert (body["claimed"], body["refused"]) == (1, 2)
    assert results[first] == {"task_id": first, "claimed": True, "status": 200, "code": None, "detail": None}
    assert results[second]["claimed"] is False and results[second]["status"] == 409
    # A task the agent may not see answers as claiming it alone would: not found, nothing more.
    assert results[hidden]["status"] == 404 and results[hidden]["code"] == "task_not_found"
    assert {t["id"] for t in _items(client, agent, "assignee=me")} >= {first}


def test_a_bulk_claim_refuses_an_empty_an_oversized_or_a_malformed_list(client, demo_cases_loaded, auth):
    agent = auth("s003")
    for body, field in [({"task_ids": []}, "task_ids"), ({"task_ids": list(range(1, 102))}, "task_ids"),
                        ({"task_ids": ["7"]}, "task_ids/0"), ({"task_ids": [0]}, "task_ids/0"), ({}, "task_ids")]:
        answer = assert_problem(client.post(f"{API}/tasks/claim", headers=agent, json=body), 422, "invalid_request")
        assert answer["errors"][0]["field"] == field, body
    assert client.post(f"{API}/tasks/claim", json={"task_ids": [1]}).status_code == 401
    assert _items(client, agent, "assignee=me") == []  # nothing was claimed by any of them


def _case(client, headers):
    (task, *_) = _items(client, headers)
    return task


def test_a_case_shows_where_it_stands_on_its_diagram(client, demo_cases_loaded, auth):
    boss = auth("s002")
    task = _case(client, boss)
    answer = client.get(f"{API}/instances/{task['instance_id']}/activity", headers=boss)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.json
    states = {e["element_id"]: e for e in body["elements"]}
    assert states[task["element_id"]]["state"] == "active"
    assert states[task["element_id"]]["sla_state"] == task["sla_state"]
    assert any(e["state"] == "completed" and e["count"] >= 1 for e in body["elements"])  # the start, at least
    diagram = client.get(f"{API}/processes/{body['process_key']}/versions/{body['version']}/bpmn", headers=boss)
    assert diagram.status_code == 200 and diagram.mimetype == "application/xml"
    root = etree.fromstring(diagram.data)
    flows = {f.get("id"): (f.get("sourceRef"), f.get("targetRef")) for f in root.iter(f"{BPMN}sequenceFlow")}
    assert body["flows"] and set(body["flows"]) <= set(flows)
    for flow in body["flows"]:  # each flow taken runs from a completed element to one reached
        source, target = flows[flow]
        assert states[source]["count"] >= 1 and states[target]["state"] != "cancelled"
    assert any(target == task["element_id"] for source, target in (flows[f] for f in body["flows"]))


def test_a_case_a_reader_may_not_see_has_no_activity_and_no_comments(client, demo_cases_loaded, auth):
    task = next(t for t in _items(client, auth("s002")) if t["branch_code"] == "HZ01")
    outsider = auth("s301")  # another branch's staff
    for path in ("activity", "comments"):
        assert_problem(client.get(f"{API}/instances/{task['instance_id']}/{path}", headers=outsider),
                       404, "instance_not_found")
    assert_problem(client.post(f"{API}/instances/{task['instance_id']}/comments", headers=outsider,
                               json={"body": "看一下"}), 404, "instance_not_found")
    assert client.get(f"{API}/instances/{task['instance_id']}/comments", headers=auth("s002")).json == []


def test_an_unknown_version_has_no_diagram(client, demo_cases_loaded, auth):
    boss = auth("s002")
    assert_problem(client.get(f"{API}/processes/complaint/versions/99/bpmn", headers=boss), 404, "process_not_found")
    assert_problem(client.get(f"{API}/processes/nothing/versions/1/bpmn", headers=boss), 404, "process_not_found")
    assert client.get(f"{API}/processes/complaint/versions/1/bpmn").status_code == 401


def test_comments_on_a_case_are_kept_in_order_with_identifiers_masked(client, demo_cases_loaded, auth):
    boss = auth("s002")
    task = _case(client, boss)
    url = f"{API}/instances/{task['instance_id']}/comments"
    first = client.post(url, headers=boss, json={"body": "客户来电，回拨号码13761547720"})
    assert first.status_code == 201, first.get_data(as_text=True)
    assert first.json["body"] == "客户来电，回拨号码137****7720"
    assert first.json["author"] == "s002"
    assert client.post(url, headers=boss, json={"body": "已联系"}).status_code == 201
    listed = client.get(url, headers=boss).json
    assert [c["body"] for c in listed][1] == "已联系" and listed[0]["id"] == first.json["id"]
    history = client.get(f"{API}/instances/{task['instance_id']}/history", headers=boss).json
    assert [e["kind"] for e in history].count("comment.added") == 2


def test_a_comment_must_say_something_and_not_too_much(client, demo_cases_loaded, auth):
    boss = auth("s002")
    url = f"{API}/instances/{_case(client, boss)['instance_id']}/comments"
    for body in ({}, {"body": ""}, {"body": "字" * 4001}, {"body": 42}):
        answer = assert_problem(client.post(url, headers=boss, json=body), 422, "invalid_request")
        assert answer["errors"][0]["field"] == "body"
    assert_problem(client.post(url, headers=boss, json={"body": "   "}), 400, "invalid_input")
    assert client.get(url, headers=boss).json == []


def _agents_steps_and_another(client, boss):
    """Two open steps offered to the call centre's agents, and one offered to none of them."""
    every = _items(client, boss)
    calls = [t for t in every if "call_center_agent" in t["candidate_groups"]]
    other = next(t for t in every if "call_center_agent" not in t["candidate_groups"])
    assert len(calls) >= 2
    return calls[:2], other


def test_a_supervisor_reassigns_steps_to_a_candidate_and_each_other_one_is_refused(client, db, demo_cases_loaded,
                                                                                  auth):
    from engine.models import AuditEvent

    boss = auth("s002")
    calls, other = _agents_steps_and_another(client, boss)
    ids = [calls[0]["id"], other["id"], calls[1]["id"]]
    answer = client.post(f"{API}/tasks/reassign", headers=boss,
                         json={"task_ids": ids, "username": "s004", "reason": "高晨休假，由马丽接手"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    results = {r["task_id"]: r for r in answer.json["results"]}
    assert (answer.json["done"], answer.json["refused"]) == (2, 1)
    assert results[other["id"]]["status"] == 403 and results[other["id"]]["code"] == "not_candidate"
    held = {t["id"]: t["assignee"] for t in _items(client, auth("s004"), "assignee=me")}
    assert held == {calls[0]["id"]: "s004", calls[1]["id"]: "s004"}
    with db.transaction() as s:
        events = s.execute(select(AuditEvent).where(AuditEvent.kind == "task.assigned",
                                                    AuditEvent.actor == "s002")).scalars().all()
    assert sorted(e.data["task_id"] for e in events) == sorted([calls[0]["id"], calls[1]["id"]])
    assert {e.data["reason"] for e in events} == {"高晨休假，由马丽接手"}


def test_a_supervisor_reminds_whoever_holds_each_step(client, db, demo_cases_loaded, auth):
    from engine.models import AuditEvent, Notification

    boss = auth("s002")
    calls, _ = _agents_steps_and_another(client, boss)
    assert client.post(f"{API}/tasks/{calls[0]['id']}/claim", headers=auth("s003"), json={}).status_code == 200
    with db.transaction() as s:
        before = s.execute(select(func.count()).select_from(Notification)).scalar_one()
    answer = client.post(f"{API}/tasks/remind", headers=boss,
                         json={"task_ids": [calls[0]["id"], calls[1]["id"]], "reason": "客户今天第二次来电催办"})
    assert answer.status_code == 200 and answer.json["done"] == 2, answer.get_data(as_text=True)
    with db.transaction() as s:
        sent = s.execute(select(Notification).order_by(Notification.id).offset(before)).scalars().all()
        reminded = s.execute(select(AuditEvent).where(AuditEvent.kind == "task.reminded")).scalars().all()
    held = [n for n in sent if n.task_id == calls[0]["id"]]
    assert [n.recipient for n in held] == ["s003"]  # a claimed step: its holder only
    offered = {n.recipient for n in sent if n.task_id == calls[1]["id"]}
    assert {"s003", "s004", "s005"} <= offered  # unclaimed: every member of its groups
    assert all("督办" in n.subject and "客户今天第二次来电催办" in n.body for n in sent)
    assert {e.data["task_id"] for e in reminded} == {calls[0]["id"], calls[1]["id"]}


def test_reminders_and_reassignments_need_a_supervisor_and_a_reason(client, demo_cases_loaded, auth):
    calls, _ = _agents_steps_and_another(client, auth("s002"))
    agent = client.post(f"{API}/tasks/remind", headers=auth("s003"),
                        json={"task_ids": [calls[0]["id"]], "reason": "快点"})
    assert agent.status_code == 200 and agent.json["results"][0]["status"] == 403
    for path, body in [("remind", {"task_ids": [calls[0]["id"]]}),
                       ("reassign", {"task_ids": [calls[0]["id"]], "reason": "请假"}),
                       ("reassign", {"task_ids": [calls[0]["id"]], "username": "s004", "reason": ""})]:
        answer = assert_problem(client.post(f"{API}/tasks/{path}", headers=auth("s002"), json=body),
                                422, "invalid_request")
        assert answer["errors"][0]["field"] in ("reason", "username")
    blank = client.post(f"{API}/tasks/remind", headers=auth("s002"), json={"task_ids": [calls[0]["id"]],
                                                                        "reason": "   "})
    assert blank.json["results"][0]["status"] == 400 and blank.json["results"][0]["code"] == "invalid_input"


def test_the_overdue_figure_names_each_row_as_people_know_it(client, demo_cases_loaded, auth):
    boss = auth("s002")
    by_step = client.get(f"{API}/figures/overdue-tasks?by=process&by=step", headers=boss).json
    row = next(r for r in by_step["rows"] if r["key"] == {"process": "callback", "step": "call_attempt"})
    assert row["names"]["step"] == "外呼" and row["names"]["process"] and row["names"]["process"] != "callback"
    by_branch = client.get(f"{API}/figures/overdue-tasks?by=branch&by=assignee", headers=boss).json
    names = {r["key"]["branch"]: r["names"]["branch"] for r in by_branch["rows"]}
    assert names and all(name and name != code for code, name in names.items())


def test_a_supervisor_escalates_steps_to_the_level_above_once_each(client, db, demo_cases_loaded, auth):
    from engine.models import AuditEvent, Notification, Task, TaskKind

    boss = auth("s002")
    calls = _unescalated_calls(client, db, boss)
    with db.transaction() as s:
        before = s.execute(select(func.count()).select_from(Notification)).scalar_one()
    answer = client.post(f"{API}/tasks/escalate", headers=boss,
                         json={"task_ids": [calls[0]["id"]], "reason": "客户已三次来电", "to": "hq_complaint_dept"})
    assert answer.status_code == 200 and answer.json["done"] == 1, answer.get_data(as_text=True)
    with db.transaction() as s:
        escalation = s.execute(select(Task).where(Task.escalated_task_id == calls[0]["id"])).scalar_one()
        sent = s.execute(select(Notification).order_by(Notification.id).offset(before)).scalars().all()
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "task.escalated")).scalar_one()
        members = set(s.execute(_members_of("hq_complaint_dept")).scalars())
    assert escalation.kind == TaskKind.ESCALATION and escalation.candidate_groups == ["hq_complaint_dept"]
    assert escalation.priority > calls[0]["priority"]
    assert members and {n.recipient for n in sent} == members
    assert all("升级" in n.subject and "客户已三次来电" in n.body for n in sent)
    assert (event.actor, event.data["task_id"], event.data["escalation_task_id"], event.data["reason"]) == \
        ("s002", calls[0]["id"], escalation.id, "客户已三次来电")
    # The escalation is open: escalating the same step again would chase the same people twice.
    again = client.post(f"{API}/tasks/escalate", headers=boss,
                        json={"task_ids": [calls[0]["id"]], "reason": "再次升级", "to": "hq_complaint_dept"})
    assert again.json["results"][0]["status"] == 409 and again.json["done"] == 0


def _unescalated_calls(client, db, boss):
    """Open call steps the demo has not escalated already."""
    from engine.models import Task, TaskKind

    with db.transaction() as s:
        escalated = set(s.execute(select(Task.escalated_task_id).where(Task.kind == TaskKind.ESCALATION)).scalars())
    return [t for t in _items(client, boss)
            if "call_center_agent" in t["candidate_groups"] and t["id"] not in escalated]


def _members_of(group):
    from engine.models import Group, GroupMember, User
    return (select(User.username).join(GroupMember, GroupMember.user_id == User.id)
            .join(Group, Group.id == GroupMember.group_id).where(Group.key == group, User.active.is_(True)))


def test_an_escalation_needs_a_supervisor_a_reason_and_a_level_with_people_in_it(client, db, demo_cases_loaded,
                                                                                   auth):
    calls = _unescalated_calls(client, db, auth("s002"))
    step = [calls[0]["id"]]
    agent = client.post(f"{API}/tasks/escalate", headers=auth("s003"), json={"task_ids": step, "reason": "快"})
    assert agent.json["results"][0]["status"] == 403
    assert_problem(client.post(f"{API}/tasks/escalate", headers=auth("s002"), json={"task_ids": step}),
                   422, "invalid_request")
    for to, says in [("no_such_group", "no group"), ("call_center_supervisor", "you alone")]:
        answer = client.post(f"{API}/tasks/escalate", headers=auth("s002"),
                             json={"task_ids": step, "reason": "请处理", "to": to})
        result = answer.json["results"][0]
        assert (result["status"], result["code"]) == (400, "invalid_input") and says in result["detail"], result
