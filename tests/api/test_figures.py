"""The supervisors' figures over HTTP (``/api/v1/figures/…``) and their inputs on the CLI
(``bpm figures import-snapshot``, ``bpm figures set``).

Cases are driven through the engine on small stand-in diagrams that carry the process keys,
step ids and facts the figures read; the figures' own tests (tests/test_figures.py) drive
the real complaint and callback diagrams. Personas (conftest): li, zhao (clerks, HZ01), chen
(clerk, NB02), owner (process_owner), boss (supervisor of HZ01), plus ``hq``: compliance at
headquarters, no branch. Time moves with time-machine; tokens are taken at the moved time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from sqlalchemy import select

from engine.access import identity
from engine.brokerage import settings
from engine.calendars import SHANGHAI
from engine.errors import InvalidInput
from engine.models import Task
from engine.process import deployments, instances, tasks
from tests.brokerage.test_figures import (  # noqa: F401 - fixtures
    RETENTION,
    SNAPSHOT_COLUMNS,
    business_periods,
    clean_settings,
    groups,
    working_days_overdue,
)
from tests.support.api import API, assert_problem, login
from tests.support.bpmn import bundle_of, flow, linear, process, user_task
from tests.support.cli import bpm

pytestmark = pytest.mark.store_independent

D = timedelta(days=1)
NOW = datetime(2026, 3, 25, 10, tzinfo=SHANGHAI)
T0 = datetime(2026, 3, 2, 10, tzinfo=SHANGHAI)
ENDPOINTS = ("overdue-tasks", "complaints", "retention", "callbacks/new-accounts", "callbacks/periodic",
             "satisfaction", "group-assessment")
MARCH = "from=2026-03-01&to=2026-03-31"


def facts(*names: str) -> str:
    return ('    <bpmn:extensionElements><camunda:properties><camunda:property name="reportVariables" '
            f'value="{",".join(names)}"/></camunda:properties></bpmn:extensionElements>\n')


# Stand-ins: the complaint's response (C12) and satisfaction call (C17); the callback's
# questionnaire (K5); a task with a due date from the start data, in the clerks' group.
COMPLAINT = process(facts("request_kind", "severity", "csat")
                    + linear(("communicate_result", user_task("communicate_result")),
                             ("satisfaction_callback", user_task("satisfaction_callback"))), key="complaint")
CALLBACK = process(facts("callback_type", "service_group", "service_satisfaction")
                   + linear(("questionnaire", user_task("questionnaire"))), key="callback")
CHORE = process('    <bpmn:startEvent id="start"/>\n' + flow("start", "work")
                + user_task("work", extra='camunda:dueDate="${due}"') + flow("work", "end")
                + '    <bpmn:endEvent id="end"/>\n', key="chore")


@pytest.fixture
def hq(db, rt, people, password_hashes) -> str:
    """Compliance at headquarters: every branch."""
    with db.transaction() as s:
        identity.ensure_group(s, key="compliance")
        user = identity.create_user(s, username="hq", display_name="总部合规", now=rt.now(), groups=["compliance"])
        if "hq" not in password_hashes:
            password_hashes["hq"] = identity.hash_password("hq-pw")
        user.password_hash = password_hashes["hq"]
    return "hq"


def get(client, headers: dict[str, str], path: str) -> Any:
    response = client.get(f"{API}/figures/{path}", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def deploy(db, rt, people, *xml: str) -> None:
    with db.transaction() as s:
        for text in xml:
            deployments.deploy(s, rt, bundle_of(text), actor=people.owner)


def start(db, rt, actor, process_key: str, key: str, **data: Any) -> None:
    with db.transaction() as s:
        instances.start(s, rt, process_key=process_key, business_key=key, actor=actor, data=data)


def complete(db, rt, actor, key: str, element: str, **data: Any) -> None:
    with db.transaction() as s:
        task = s.execute(select(Task).where(Task.business_key == key, Task.element_id == element,
                                            Task.status.in_(("open", "claimed")))).scalar_one()
        tasks.complete(s, rt, task_id=task.id, actor=actor, data=data)


def test_figures_need_a_token_and_a_supervisor_compliance_or_branch_head(client, auth, people, hq):
    for path in ENDPOINTS:
        assert_problem(client.get(f"{API}/figures/{path}"), 401, "unauthenticated")
        for username in ("li", "chen"):
            assert_problem(client.get(f"{API}/figures/{path}", headers=auth(username)), 403, "forbidden")
        assert client.get(f"{API}/figures/{path}?{MARCH}", headers=auth("hq")).status_code == 200
    # The supervisor of HZ01 is branch staff: HZ01 only, another branch is refused.
    assert client.get(f"{API}/figures/complaints?branch=HZ01", headers=auth("boss")).status_code == 200
    body = assert_problem(client.get(f"{API}/figures/complaints?branch=NB02", headers=auth("boss")), 403,
                          "forbidden")
    assert "NB02" in body["detail"]


def test_questions_are_validated(client, auth, people, hq):
    headers = auth("hq")
    assert_problem(client.get(f"{API}/figures/complaints?from=2026-03-02&to=2026-03-01", headers=headers), 400,
                   "invalid_input")
    assert_problem(client.get(f"{API}/figures/overdue-tasks?by=client", headers=headers), 422, "invalid_request")
    assert_problem(client.get(f"{API}/figures/overdue-tasks?buckets=-1", headers=headers), 422, "invalid_request")
    assert_problem(client.get(f"{API}/figures/overdue-tasks?buckets=3&buckets=1", headers=headers), 400,
                   "invalid_input")
    assert_problem(client.get(f"{API}/figures/overdue-tasks?buckets=2.5", headers=headers), 422,
                   "invalid_request")  # buckets end on whole working days
    assert_problem(client.get(f"{API}/figures/satisfaction?by=assignee", headers=headers), 422, "invalid_request")
    assert_problem(client.get(f"{API}/figures/callbacks/periodic?from=2025-12-01&to=2026-01-31", headers=headers),
                   400, "invalid_input")


def test_overdue_tasks_by_branch_and_assignee_and_what_a_branch_head_sees(db, rt, client, people, hq):
    deploy(db, rt, people, CHORE)
    # key, branch, due, who claims it (None: nobody)
    chores = [("W-1", "HZ01", NOW - 0.5 * D, "li"), ("W-2", "HZ01", NOW - 4 * D, "zhao"),
              ("W-3", "HZ01", NOW - 9 * D, None), ("W-4", "NB02", NOW - 2 * D, None),
              ("W-5", "HZ01", NOW + 2 * D, "li"), ("W-6", "HZ01", NOW + 40 * D, None)]
    with time_machine.travel(NOW - 10 * D, tick=False) as clock:
        for key, branch, due, who in chores:
            start(db, rt, people.clerk, "chore", key, branch_code=branch, due=due.isoformat())
            if who is not None:
                with db.transaction() as s:
                    task = s.execute(select(Task).where(Task.business_key == key)).scalar_one()
                    tasks.claim(s, rt, task_id=task.id, actor=people.clerk if who == "li" else people.teammate)
        clock.move_to(NOW)
        company = get(client, login(client, "hq"), "overdue-tasks?by=branch&by=assignee&buckets=1&buckets=5")
        default = get(client, login(client, "hq"), "overdue-tasks?by=branch")
        branch_head = get(client, login(client, "boss"), "overdue-tasks")

    # By the definition: overdue = due before now; at risk = not overdue, 80 % of the window gone.
    start_at, periods = NOW - 10 * D, business_periods(db)
    expected: dict[tuple[str, str | None], list[int]] = {}
    for _, branch, due, who in chores:
        overdue = due < NOW
        at_risk = not overdue and start_at + (due - start_at) * 0.8 <= NOW
        if overdue or at_risk:
            row = expected.setdefault((branch, who), [0, 0, 0, 0, 0])
            row[0] += overdue
            row[1] += at_risk
            if overdue:  # whole working days overdue (on the business calendar)
                age = working_days_overdue(due, NOW, periods)
                row[2 + (age > 1) + (age > 5)] += 1
    assert {(r["key"]["branch"], r["key"]["assignee"]): [r["overdue"], r["at_risk"], *(b["count"] for b in r["ageing"])]
            for r in company["rows"]} == expected
    assert company["by"] == ["branch", "assignee"]
    assert [(b["from_days"], b["to_days"]) for b in company["total"]["ageing"]] == [(0, 1), (2, 5), (6, None)]
    # W-1 is half a day overdue, W-4 two working days, W-2 (four calendar days, a weekend in
    # them) two and W-3 (nine calendar days) seven: by default 0-2, 3-5, 6-10 and >10 WD.
    assert [(b["from_days"], b["to_days"], b["count"]) for b in default["total"]["ageing"]] == [
        (0, 2, 3), (3, 5, 0), (6, 10, 1), (11, None, 0)]
    assert (company["total"]["overdue"], company["total"]["at_risk"]) == (4, 1)
    assert datetime.fromisoformat(company["as_of"]) == NOW
    # boss (supervisor, HZ01): by branch by default, and only HZ01.
    assert [(r["key"], r["overdue"], r["at_risk"]) for r in branch_head["rows"]] == [({"branch": "HZ01"}, 3, 1)]


@pytest.mark.usefixtures("clean_settings")
def test_complaint_callback_and_satisfaction_figures_over_http(db, rt, client, people, hq):
    deploy(db, rt, people, COMPLAINT, CALLBACK)
    with time_machine.travel(T0, tick=False) as clock:
        for key, branch, severity in (("CMP-1", "HZ01", "general"), ("CMP-2", "HZ01", "general"),
                                      ("CMP-3", "NB02", "major")):
            start(db, rt, people.clerk, "complaint", key, branch_code=branch, request_kind="complaint",
                  severity=severity)
        start(db, rt, people.clerk, "callback", "CB-1", branch_code="HZ01", callback_type="new_account",
              service_group="HZ01-G1")
        # A client the registry does not hold: a case for it is started on the firm's behalf.
        start(db, rt, people.system, "callback", "CB-2", branch_code="NB02", callback_type="periodic",
              service_group="NB02-G1", client_id="C99")
        clock.move_to(T0 + 2 * D)
        complete(db, rt, people.clerk, "CMP-1", "communicate_result")
        complete(db, rt, people.clerk, "CMP-1", "satisfaction_callback", csat=5)
        complete(db, rt, people.clerk, "CB-1", "questionnaire", service_satisfaction=3)
        clock.move_to(T0 + 3 * D)
        complete(db, rt, people.clerk, "CMP-2", "communicate_result")
        complete(db, rt, people.clerk, "CMP-2", "satisfaction_callback", csat=4)
        complete(db, rt, people.clerk, "CMP-3", "communicate_result")
        complete(db, rt, people.clerk, "CB-2", "questionnaire", service_satisfaction=5)
        clock.move_to(NOW)
        with db.transaction() as s:
            settings.set_value(s, key=f"{settings.ACTIVE_CLIENTS}.2025", value="15", actor=people.owner,
                                now=rt.now())
        headers = login(client, "hq")
        complaints = get(client, headers, f"complaints?{MARCH}")
        hz01_complaints = get(client, login(client, "boss"), f"complaints?{MARCH}")
        new_accounts = get(client, headers, f"callbacks/new-accounts?{MARCH}")
        periodic = get(client, headers, "callbacks/periodic?from=2026-01-01&to=2026-03-25")
        by_branch = get(client, headers, f"satisfaction?{MARCH}")
        by_group = get(client, headers, f"satisfaction?{MARCH}&by=group&branch=HZ01")

    general = next(r for r in complaints["by_severity"] if r["severity"] == "general")
    assert (general["responded"], general["median_days"], general["max_days"]) == (2, 2.5, 3.0)
    assert general["on_time"] == 2 and general["on_time_rate"] == 1.0
    assert general["median_working_days"] == pytest.approx(2.5)  # Mon 10:00 → Wed / Thu 10:00
    assert complaints["total"]["responded"] == 3
    assert [r["severity"] for r in complaints["by_severity"]] == ["general", "major", "group", "regulator"]
    assert complaints["regulator_feedback"] == {"due": 0, "on_time": 0, "late": 0, "pending": 0,
                                                "on_time_rate": None}
    assert hz01_complaints["total"]["responded"] == 2
    assert {k: new_accounts[k] for k in ("opened", "completed_on_time", "completion_rate", "target")} == \
        {"opened": 1, "completed_on_time": 1, "completion_rate": 1.0, "target": 1.0}
    assert {k: periodic[k] for k in ("year", "base_year_end", "active_clients", "min_ratio", "quota",
                                     "clients_called", "coverage")} == \
        {"year": 2026, "base_year_end": 2025, "active_clients": 15, "min_ratio": "0.10", "quota": 2,
         "clients_called": 1, "coverage": 0.5}
    assert [(r["key"], r["complaint"]["responses"], r["complaint"]["mean"], r["callback"]["mean"],
             r["overall"]["mean"], r["overall"]["satisfied_share"]) for r in by_branch] == \
        [("HZ01", 2, 4.5, 3.0, 4.0, pytest.approx(2 / 3)), ("NB02", 0, None, 5.0, 5.0, 1.0)]
    # The stand-in complaints name no client: they are in no group.
    assert [(r["key"], r["complaint"]["responses"], r["callback"]["responses"]) for r in by_group] == \
        [("HZ01-G1", 0, 1), (None, 2, 0)]


def test_retention_figures_over_http(db, rt, client, people, hq):
    deploy(db, rt, people, RETENTION.replace("branch:counter_staff", "clerks").replace("${service_group}", "clerks"))
    with time_machine.travel(T0, tick=False):
        for key, willing in (("RET-1", True), ("RET-2", False)):
            start(db, rt, people.clerk, "retention", key, branch_code="HZ01", submit_due=(T0 + D).isoformat())
            complete(db, rt, people.clerk, key, "accept", client_open_to_retention_talk=willing)
        complete(db, rt, people.clerk, "RET-1", "retention_conversation", retention_outcome="retained")
        complete(db, rt, people.clerk, "RET-1", "confirm_withdrawal", withdrawal_confirmed_by_client=True)
    with time_machine.travel(NOW, tick=False):
        body = get(client, login(client, "hq"), f"retention?{MARCH}")
    assert body == {**body, "requests": 2, "open_to_talk": 1, "conversations_held": 1, "retained": 1,
                    "attempt_rate": 1.0, "success_rate": 1.0, "late_executions": 1, "guard_total": 1}


SNAPSHOT = SNAPSHOT_COLUMNS + """
2026-02-01,2026-02-28,C01,HZ01,HZ01-G1,1000000,1100000,40000,3000000,1050000,1
2026-02-01,2026-02-28,C06,HZ01,HZ01-G2,500000,480000,10000,500000,490000,0
2026-02-01,2026-02-28,C03,NB01,NB01-G1,800000,790000,-5000,100000,795000,0
2026-02-01,2026-02-28,C04,NB01,NB01-G1,20000,,0,0,,0
"""


@pytest.mark.usefixtures("clean_settings", "groups")  # a snapshot row must name a known branch and group
def test_snapshots_and_settings_from_the_cli_feed_the_group_assessment(db, rt, client, people, hq, database_url,
                                                                       tmp_path):
    path = tmp_path / "feb.csv"
    path.write_text(SNAPSHOT, encoding="utf-8")
    result = bpm(database_url, "figures", "import-snapshot", path)
    assert result.exit_code == 1, result.output  # C04 has no assets at the end
    assert result.output.splitlines() == [f"{path} (snapshot): 3 created, 0 updated, 0 unchanged, 1 rejected",
                                          f"  {path}:5 assets_end: assets_end is required"]
    again = bpm(database_url, "figures", "import-snapshot", path)
    assert "0 created, 0 updated, 3 unchanged" in again.output
    assert bpm(database_url, "figures", "set", "figures.group_rank.highlight", "1").exit_code == 0
    refused = bpm(database_url, "figures", "set", "figures.group_rank.highlight", "many")
    assert refused.exit_code == 1 and isinstance(refused.exception, InvalidInput)

    body = get(client, login(client, "hq"), "group-assessment?from=2026-02-01&to=2026-02-28")
    (february,) = body
    assert (february["period_start"], february["period_end"]) == ("2026-02-01", "2026-02-28")
    by_group = {g["group"]: g for g in february["groups"]}
    assert [g["group"] for g in february["groups"]] == ["HZ01-G1", "NB01-G1", "HZ01-G2"]
    g1 = by_group["HZ01-G1"]
    assert (Decimal(g1["growth"]), Decimal(g1["new_money"]), Decimal(g1["appreciation"])) == \
        (Decimal(100000), Decimal(40000), Decimal(60000))
    assert (g1["growth_rate"], g1["turnover"], g1["referral_rate"]) == \
        (pytest.approx(0.1), pytest.approx(3000000 / 1050000), 1.0)
    # highlight 1 (set above): the best is "top", the worst "bottom".
    assert [(g["rank"], g["highlight"]) for g in february["groups"]] == [(1, "top"), (2, None), (3, "bottom")]
    nb01 = get(client, login(client, "hq"), "group-assessment?from=2026-02-01&to=2026-02-28&branch=NB01")
    assert [(g["group"], g["clients"], g["rank"]) for g in nb01[0]["groups"]] == [("NB01-G1", 1, 1)]


def test_the_people_the_figures_are_for_read_every_figure_in_their_scope(db, rt, client, demo_app):
    """林卫东 (s001, HQ, process owner) reads the firm's figures; 曹莉 (s102, HZ01 ops director)
    and 彭涛 (s103, HZ01 客服总监) read their branch's, and are refused Ningbo's."""
    with db.transaction() as s:
        headers = {u: {"Authorization": f"Bearer {identity.issue_token(s, username=u, now=rt.now())}"}
                   for u in ("s001", "s102", "s103")}
    for path in ENDPOINTS:
        for username in ("s001", "s102", "s103"):
            response = client.get(f"{API}/figures/{path}?{MARCH}", headers=headers[username])
            assert response.status_code == 200, (path, username, response.get_data(as_text=True))
        for username in ("s102", "s103"):
            assert_problem(client.get(f"{API}/figures/{path}?{MARCH}&branch=NB01", headers=headers[username]),
                           403, "forbidden")
        assert client.get(f"{API}/figures/{path}?{MARCH}&branch=NB01", headers=headers["s001"]).status_code == 200
