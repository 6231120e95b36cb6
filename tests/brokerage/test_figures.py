"""Supervisors' figures (engine.figures) on rows made by driving real instances through the
engine, with time moved by time-machine; snapshots through their CSV import. Each test
works out the right answer from its own list of cases, not from the code under test."""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import chinese_calendar
import pytest
import time_machine
from sqlalchemy import delete, or_, select

from engine.access.identity import Actor
from engine.bpmn import bundle
from engine.brokerage import demo, figures, registry_import, settings, snapshots
from engine.calendars import SHANGHAI, Unit
from engine.config import PROJECT_ROOT
from engine.errors import InvalidInput, PermissionDenied
from engine.models import AuditEvent, ClientSnapshot, Setting, Task
from engine.process import deployments, instances, tasks
from engine.sla import admin as sla_admin
from engine.sla import calendar_store
from engine.timers import firing
from tests.brokerage.test_callback import ANSWERS_OK, IDENTITY_OK, REACHED
from tests.brokerage.test_complaint import COMMUNICATED, CONTACTED, PHONE_CALL, Case, registration
from tests.conftest import staff_of
from tests.support.bpmn import bundle_of, flow, process, user_task

WORKFLOWS = PROJECT_ROOT / "workflows"
D = timedelta(days=1)


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


def whole_scope(first: date, last: date, **kwargs: Any) -> figures.Scope:
    start, end = figures.period(first, last, now=sh(2026, 1, 1))
    return figures.Scope(start=start, end=end, **kwargs)


@pytest.fixture
def clean_settings(db):
    """bpm_setting is reference data the suite keeps between tests: take ours out again."""
    yield
    with db.transaction() as s:
        s.execute(delete(Setting).where(or_(Setting.key.in_(list(figures.CONFIG_KEYS)),
                                            Setting.key.like(f"{settings.ACTIVE_CLIENTS}.%"))))


@pytest.fixture
def staff(db, rt, demo_registry) -> dict[str, Actor]:
    """The demo registry (people, groups, clients) with the complaint and callback diagrams
    and their SLA policies."""
    system = Actor.system("test")
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle.from_paths([WORKFLOWS / "complaint.bpmn", WORKFLOWS / "callback.bpmn"]),
                           actor=system)
        for name in ("complaint", "callback"):
            for policy in json.loads((WORKFLOWS / "sla" / f"{name}.json").read_text(encoding="utf-8")):
                sla_admin.upsert_policy(s, rt, data=policy, actor=system)
    return staff_of(db)


# -- 1. overdue and at-risk tasks ----------------------------------------------------------
CHORES = process(
    '    <bpmn:startEvent id="start"/>\n' + flow("start", "fork")
    + '    <bpmn:parallelGateway id="fork"/>\n' + flow("fork", "a") + flow("fork", "b")
    + user_task("a", groups="${groups_a}", extra='camunda:dueDate="${due_a}"')
    + user_task("b", groups="${groups_b}", extra='camunda:dueDate="${due_b}"')
    + flow("a", "join") + flow("b", "join")
    + '    <bpmn:parallelGateway id="join"/>\n' + flow("join", "end") + '    <bpmn:endEvent id="end"/>\n',
    key="chores")
NOW = sh(2026, 3, 25, 10)
T0 = NOW - 20 * D
# business key: branch, (groups, due) of step a, (groups, due) of step b
CHORE_CASES = {
    "CH-1": ("HZ01", (["clerks"], NOW - 0.5 * D), (["managers"], NOW + 30 * D)),
    "CH-2": ("HZ01", (["clerks"], NOW - 2 * D), (["managers"], NOW + 1 * D)),
    "CH-3": ("NB02", (["ningbo_clerks"], NOW - 5 * D), (["ningbo_clerks"], NOW - 10 * D)),
    "CH-4": ("HZ01", (["clerks", "managers"], NOW - 8 * D), (["clerks"], NOW - 4 * D)),
    "CH-5": ("HZ01", (["clerks"], NOW - 2 * D), (["clerks"], NOW - 6 * D)),
    "CH-6": ("NB02", (["ningbo_clerks"], NOW - 3 * D), (["ningbo_clerks"], NOW + 2 * D)),
}


@dataclass
class Chore:
    branch: str
    groups: list[str]
    step: str
    due: datetime
    assignee: str | None = None
    completed: datetime | None = None
    paused: datetime | None = None


def _chore_task(db, key: str, step: str) -> Task:
    with db.transaction() as s:
        return s.execute(select(Task).where(Task.business_key == key, Task.element_id == step)).scalar_one()


def _drive_chores(db, rt, people) -> dict[tuple[str, str], Chore]:
    """Starts the cases at T0, then claims, pauses and completes some of their tasks; returns
    what the test knows about every task."""
    model = {(key, step): Chore(branch, groups, step, due)
             for key, (branch, a, b) in CHORE_CASES.items() for step, (groups, due) in (("a", a), ("b", b))}
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(CHORES), actor=people.owner)
    clerk_of = {"HZ01": people.clerk, "NB02": people.outsider}
    with time_machine.travel(T0, tick=False) as clock:
        for key, (branch, (groups_a, due_a), (groups_b, due_b)) in CHORE_CASES.items():
            with db.transaction() as s:
                instances.start(s, rt, process_key="chores", business_key=key, actor=clerk_of[branch],
                                data={"branch_code": branch, "groups_a": groups_a, "groups_b": groups_b,
                                      "due_a": due_a.isoformat(), "due_b": due_b.isoformat()})
        clock.move_to(T0 + timedelta(hours=1))
        for key, step, actor in (("CH-1", "a", people.clerk), ("CH-3", "a", people.outsider),
                                 ("CH-4", "a", people.teammate)):
            with db.transaction() as s:
                tasks.claim(s, rt, task_id=_chore_task(db, key, step).id, actor=actor)
            model[key, step].assignee = actor.username

        def pause(key: str, step: str, at: datetime) -> None:
            clock.move_to(at)
            with db.transaction() as s:
                tasks.pause(s, rt, task_id=_chore_task(db, key, step).id, actor=people.supervisor, reason="等客户")
            model[key, step].paused = at

        def complete(key: str, step: str, actor: Actor, at: datetime) -> None:
            clock.move_to(at)
            with db.transaction() as s:
                tasks.complete(s, rt, task_id=_chore_task(db, key, step).id, actor=actor, data={})
            model[key, step].assignee, model[key, step].completed = actor.username, at

        pause("CH-5", "a", NOW - 6 * D)  # before its due date: the clock stopped in time
        pause("CH-5", "b", NOW - 4 * D)  # two days after its due date: ages no further
        complete("CH-6", "a", people.outsider, NOW - 4 * D)  # a day early
        complete("CH-4", "b", people.clerk, NOW - 1 * D)  # three days late
    return model


# The business hours the figures count in (09:00-12:00 and 13:00-17:00 Beijing time unless the
# test database's default calendar says otherwise: read once from there).
def working_days_overdue(due: datetime, clock: datetime, periods: list[tuple[int, int]]) -> int:
    """Whole working days from ``due`` to ``clock``, by the definition and minute by minute:
    the minutes inside business hours (``periods``: minutes of the day) of the days the State
    Council's notice makes working days (chinese_calendar), over one day's business minutes."""
    per_day = sum(b - a for a, b in periods)
    minutes, moment = 0, due.astimezone(SHANGHAI)
    end = clock.astimezone(SHANGHAI)
    while moment < end:
        of_day = moment.hour * 60 + moment.minute
        if chinese_calendar.is_workday(moment.date()) and any(a <= of_day < b for a, b in periods):
            minutes += 1
        moment += timedelta(minutes=1)
    return minutes // per_day


def business_periods(db) -> list[tuple[int, int]]:
    with db.transaction() as s:
        hours = calendar_store.CALENDARS.get(s, "default").hours
    return [(a.hour * 60 + a.minute, b.hour * 60 + b.minute) for a, b in hours.periods]


def _expected(model: dict[tuple[str, str], Chore], dims: list[str], *, as_of: datetime, start: datetime,
              end: datetime, edges: tuple[int, ...], regulatory: set[str],
              periods: list[tuple[int, int]]) -> dict[tuple[Any, ...], list[Any]]:
    """The figure by the definition, task by task: {key: [overdue, at risk, closed late,
    regulatory overdue, [count per ageing bucket]]}; ageing in whole working days overdue."""
    result: dict[tuple[Any, ...], list[Any]] = {}
    for chore in model.values():
        is_open = chore.completed is None or chore.completed > as_of
        clock = chore.paused if chore.paused is not None and chore.paused < as_of else as_of
        overdue = is_open and chore.due < clock
        at_risk = is_open and not overdue and T0 + (chore.due - T0) * 0.8 <= clock
        late = chore.completed is not None and start <= chore.completed < end and chore.completed > chore.due
        if not (overdue or at_risk or late):
            continue
        age = working_days_overdue(chore.due, clock, periods) if overdue else 0
        values = {"branch": [chore.branch], "group": chore.groups, "process": ["chores"], "step": [chore.step],
                  "assignee": [chore.assignee]}
        keys: list[tuple[Any, ...]] = [()]
        for d in dims:
            keys = [(*k, v) for k in keys for v in values[d]]
        for key in keys:
            row = result.setdefault(key, [0, 0, 0, 0, [0] * (len(edges) + 1)])
            row[0] += overdue
            row[1] += at_risk
            row[2] += late
            row[3] += overdue and chore.step in regulatory
            if overdue:
                row[4][sum(1 for e in edges if age > e)] += 1
    return result


def _actual(figure: figures.TaskFigures) -> dict[tuple[Any, ...], list[Any]]:
    return {tuple(r.key.values()): [r.overdue, r.at_risk, r.closed_late, r.regulatory_overdue,
                                    [b.count for b in r.ageing]] for r in figure.rows}


@pytest.mark.sqlite
def test_overdue_and_at_risk_tasks_by_every_dimension_with_ageing_buckets(db, rt, people, clean_settings):
    model = _drive_chores(db, rt, people)
    start, end = figures.period(T0.date(), NOW.date(), now=NOW)
    scope = figures.Scope(start=start, end=end)
    periods = business_periods(db)
    with db.transaction() as s:
        config = replace(figures.load_config(s), regulatory_steps=(("chores", "b"),))
        edges = config.ageing_buckets
        assert edges == (2, 5, 10)  # brief §5: 0-2, 3-5, 6-10, >10 WD

        def check(dims: list[str], scope: figures.Scope = scope, at: datetime = NOW,
                  subset: dict[tuple[str, str], Chore] = model) -> None:
            figure = figures.overdue_tasks(s, scope=scope, by=dims, now=at, config=config)
            as_of = min(scope.end, at)
            assert figure.as_of == as_of
            assert _actual(figure) == _expected(subset, figure.by, as_of=as_of, start=scope.start, end=scope.end,
                                                edges=edges, regulatory={"b"}, periods=periods)
            (total,) = _expected(subset, [], as_of=as_of, start=scope.start, end=scope.end, edges=edges,
                                 regulatory={"b"}, periods=periods).values()
            assert _actual(replace(figure, rows=[figure.total])) == {(): total}

        for dims in (["branch"], ["group"], ["process", "step"], ["assignee"], ["branch", "assignee"]):
            check(dims)
        figure = figures.overdue_tasks(s, scope=scope, by=["step"], now=NOW, config=config)
        assert figure.by == ["process", "step"]  # a step is named within its process
        # The figures these cases were chosen for, spelled out once.
        assert (figure.total.overdue, figure.total.at_risk, figure.total.closed_late) == (6, 2, 1)
        # In whole working days: CH-1.a (due last night) 0, CH-5.b (paused two days after its due
        # date) 1, CH-2.a 2; CH-3.a, five calendar days over a weekend, 3; CH-4.a 6; CH-3.b,
        # ten calendar days, 7. Counted in calendar days they would fall [1, 1, 2, 2] otherwise.
        assert [(b.from_days, b.to_days) for b in figure.total.ageing] == [(0, 2), (3, 5), (6, 10), (11, None)]
        assert [b.count for b in figure.total.ageing] == [3, 1, 2, 0]

        # Scoped to a branch, and to a candidate group (only that group's tasks).
        check(["group"], replace(scope, branch="HZ01"), subset={k: c for k, c in model.items() if c.branch == "HZ01"})
        managers = {k: replace(c, groups=["managers"]) for k, c in model.items() if "managers" in c.groups}
        check(["group", "step"], replace(scope, group="managers"), subset=managers)
        # As of a past day: CH-4.b, completed since, was still open and overdue then.
        past = figures.Scope(start=start, end=figures.period(T0.date(), (NOW - 3 * D).date(), now=NOW)[1])
        check(["branch"], past)
        # Buckets given with the question win over the configured ones.
        custom = figures.overdue_tasks(s, scope=scope, by=[], now=NOW, config=config, buckets=[1, 6])
        assert [(b.from_days, b.to_days) for b in custom.total.ageing] == [(0, 1), (2, 6), (7, None)]
        assert [b.count for b in custom.total.ageing] == [2, 3, 1]


def test_unknown_dimension_and_bad_buckets_are_refused(db):
    with db.transaction() as s:
        config = figures.load_config(s)
        scope = whole_scope(date(2026, 1, 1), date(2026, 1, 31))
        with pytest.raises(InvalidInput, match="unknown dimension"):
            figures.overdue_tasks(s, scope=scope, by=["client"], now=NOW, config=config)
        with pytest.raises(InvalidInput, match="increasing"):
            figures.overdue_tasks(s, scope=scope, by=[], now=NOW, config=config, buckets=[3, 1])
        with pytest.raises(InvalidInput, match="whole working-day"):  # a bucket ends on a whole day
            figures.overdue_tasks(s, scope=scope, by=[], now=NOW, config=config, buckets=[2.5, 6])


# -- 2. complaints -------------------------------------------------------------------------
C0 = sh(2026, 3, 2, 9)  # Monday 09:00; 2026-03-02 … 03-24 has no public holiday (checked below)
REGULATOR_DUE = "2026-03-20T17:00:00+08:00"


def _complaint(db, rt, staff, key: str, *, kind: str, branch: str = "HZ01", client: str = "C01",
               until: str = "communicate_result", regulator_due: str = REGULATOR_DUE) -> Case:
    """A complaint received at the current time and worked up to (not including) ``until``."""
    case = Case(db, rt, staff, key)
    people = {"HZ01": ("s106", "s103", "s101"), "NB01": ("s205", "s203", "s201")}[branch]
    owner = "s007" if kind == "regulator" else "s003"
    if kind == "regulator":
        case.receive("complaint_12386_transfer", {"channel": "12386", "regulator_ref": f"12386-{key}",
                                                  "regulator_due_at": regulator_due, "branch_code": branch,
                                                  "client_id": client}, sender="s007")
        case.do("register_12386", "s007", registration(channel="12386", regulator_ref=f"12386-{key}",
                                                       regulator_due_at=regulator_due, client_id=client))
    else:
        case.receive("complaint_received", {**PHONE_CALL, "client_id": client, "branch_code": branch})
        major = {"amount_claimed": 80000, "client_request": "compensation",
                 "alleged_violations": ["suitability_mismatch"]} if kind == "major" else {}
        case.do("register", "s003", registration(client_id=client, **major))
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("acknowledge", owner, CONTACTED),
        ("investigate", people[0], {"facts_found": "核实", "root_cause": "fees", "staff_at_fault": False}),
        *([("compliance_review", "s006", {"violation_confirmed": False, "regulatory_report_required": False,
                                           "disciplinary_referral": False, "opinion": "未见违规"})]
          if kind != "general" else []),
        ("propose_resolution", people[1], {"resolution_type": "explanation", "compensation_amount": 0,
                                           "resolution_text": "说明"}),
        ("approve_branch", people[2], {"decision": "approve"}),
    ]
    for element, who, data in steps:
        if element == until:
            break
        case.do(element, who, data)
    return case


@pytest.mark.sqlite
def test_complaint_resolution_time_on_time_rate_and_12386_feedback(db, rt, staff, clean_settings):
    assert all(chinese_calendar.is_workday(C0.date() + i * D) == ((C0.date() + i * D).weekday() < 5)
               for i in range(23))
    # (key, severity, branch, client, response time, working days after C0 by construction)
    responses = [
        # C01 (the default), not C02: C02 is 68, and a complaint of a client 65 or older is major.
        ("G1", "general", "HZ01", "C01", sh(2026, 3, 3, 13), 1.5),
        ("G2", "general", "HZ01", "C06", sh(2026, 3, 5, 11), 3.25),
        ("M1", "major", "HZ01", "C01", sh(2026, 3, 6, 15), 4.75),
        ("M2", "major", "NB01", "C03", sh(2026, 3, 12, 9), 8.0),
        ("R1", "regulator", "HZ01", "C01", sh(2026, 3, 17, 10), 11.125),
        ("R2", "regulator", "HZ01", "C01", sh(2026, 3, 19, 16), 13.875),
        ("G3", "general", "HZ01", "C01", sh(2026, 3, 24, 10), 16.125),
    ]
    # Deadlines: general 15 WD from C0 = 03-23 09:00; major 30 WD (past every response here);
    # regulator min(30 WD, 03-20 17:00 − 2 WD) = 03-18 17:00.
    due = {"general": sh(2026, 3, 23, 9), "major": sh(2026, 4, 1), "regulator": sh(2026, 3, 18, 17)}
    with time_machine.travel(C0, tick=False) as clock:
        cases = {key: _complaint(db, rt, staff, f"CMP-20260302-{key}", kind=kind, branch=branch, client=client)
                 for key, kind, branch, client, _, _ in responses}
        # Still unanswered at the end: a general case past its deadline, a 12386 case due later.
        _complaint(db, rt, staff, "CMP-20260302-G4", kind="general", until="investigate")
        _complaint(db, rt, staff, "CMP-20260302-R3", kind="regulator", until="acknowledge",
                   regulator_due="2026-03-27T17:00:00+08:00")
        feedback = {"R1": sh(2026, 3, 19, 11), "R2": sh(2026, 3, 23, 10)}  # due 03-20 17:00: on time, late
        events = sorted([(at, key, "communicate_result") for key, _, _, _, at, _ in responses]
                        + [(at, key, "report_regulator") for key, at in feedback.items()])
        for at, key, element in events:
            clock.move_to(at)
            case = cases[key]
            if element == "communicate_result":
                case.do("communicate_result", "s007" if key.startswith("R") else "s003", COMMUNICATED)
                if key.startswith("R"):
                    case.do("close_case_hq", "s008", {"closure_reason": "resolved"})
            else:
                case.do("report_regulator", "s007", {"regulator_feedback_at": at.isoformat(),
                                                     "feedback_summary": "已反馈"})
        clock.move_to(sh(2026, 3, 25, 10))
        now = rt.now()

    with db.transaction() as s:
        config = figures.load_config(s)
        march = whole_scope(date(2026, 3, 1), date(2026, 3, 31))
        figure = figures.complaint_figures(s, scope=march, now=now, config=config)
        hz01 = figures.complaint_figures(s, scope=replace(march, branch="HZ01"), now=now, config=config)
        group = figures.complaint_figures(s, scope=replace(march, group="HZ01-G2"), now=now, config=config)
    assert figure.as_of == now

    rows = {r.severity: r for r in figure.by_severity}
    for severity in ("general", "major", "regulator", "all"):
        mine = [r for r in responses if severity in (r[1], "all")]
        days = [(at - C0) / D for _, _, _, _, at, _ in mine]
        working = [wd for *_, wd in mine]
        on_time = sum(1 for _, sev, _, _, at, _ in mine if at <= due[sev])
        row = figure.total if severity == "all" else rows[severity]
        assert row.responded == len(mine)
        assert row.median_days == pytest.approx(statistics.median(days))
        assert row.p90_days == pytest.approx(statistics.quantiles(days, n=10, method="inclusive")[8])
        assert row.max_days == pytest.approx(max(days))
        assert row.median_working_days == pytest.approx(statistics.median(working))
        assert row.p90_working_days == pytest.approx(statistics.quantiles(working, n=10, method="inclusive")[8])
        assert (row.on_time, row.on_time_rate) == (on_time, pytest.approx(on_time / len(mine)))
    assert (rows["general"].on_time, rows["major"].on_time, rows["regulator"].on_time) == (2, 2, 1)
    assert rows["group"].responded == 0 and rows["group"].median_days is None
    # G4: unanswered, its 15 WD ran out on 03-23. R3's deadline (03-25 17:00) is still ahead.
    assert [(r.severity, r.unresolved_overdue) for r in figure.by_severity if r.unresolved_overdue] == [("general", 1)]
    # 12386 feedback due in March: R1 in time, R2 late, R3 not yet due.
    assert figure.regulator_feedback == figures.RegulatorFeedback(due=3, on_time=1, late=1, pending=1,
                                                                 on_time_rate=0.5)
    # Scopes: M2 is an NB01 case; G2's client C06 is in service group HZ01-G2 (from the registry).
    assert {r.severity: r.responded for r in hz01.by_severity} == {"general": 3, "major": 1, "group": 0,
                                                                     "regulator": 2}
    assert [(r.severity, r.responded) for r in group.by_severity if r.responded] == [("general", 1)]
    assert group.total.median_days == pytest.approx((sh(2026, 3, 5, 11) - C0) / D)


def test_an_approved_extension_and_the_regulator_date_move_the_resolution_deadline(db, rt):
    """The deadline the on-time rate uses, on the seeded calendar: 15 WD from Monday
    2026-03-02 09:00 is Monday 03-23 09:00 (no holiday in between); an extension of 5 WD
    moves it to 03-30; a 12386 case is due 2 WD before the regulator's date."""
    with db.transaction() as s:
        config = figures.load_config(s)
        calendar = calendar_store.CALENDARS.get(s, config.business_hours)
    start = sh(2026, 3, 2, 9)
    assert figures.resolution_due(calendar, config, start, {"severity": "general"}) == sh(2026, 3, 23, 9)
    assert figures.resolution_due(calendar, config, start, {"severity": "general", "extension_decision": "approve",
                                                            "extension_days": 5}) == sh(2026, 3, 30, 9)
    assert figures.resolution_due(calendar, config, start, {"severity": "general", "extension_decision": "approve",
                                                            "extension_days": 40}) == sh(2026, 4, 14, 9)  # capped: 15
    assert figures.resolution_due(calendar, config, start, {"severity": "regulator",
                                                            "regulator_due_at": "2026-03-16T17:00:00+08:00"}) \
        == sh(2026, 3, 12, 17)
    assert figures.resolution_due(calendar, config, start, {"severity": None}) is None


# -- 3. retention --------------------------------------------------------------------------
# A minimal stand-in for workflows/retention.bpmn with the same step ids and variables the
# figure reads: R1 accept (client_open_to_retention_talk), A1 submit_instructions, B1
# retention_conversation (retention_outcome, the staff member's view), R5 confirm_withdrawal,
# after which the case records outcome = retained (X2) as the real diagram's wrap-up does.
# Submitting ends the case (a terminate end, as the real diagram closes the retention
# window), and so does a confirmed withdrawal.
RETENTION = process(
    '    <bpmn:extensionElements><camunda:properties><camunda:property name="reportVariables" '
    'value="client_open_to_retention_talk,service_group,outcome"/>'
    '</camunda:properties></bpmn:extensionElements>\n'
    '    <bpmn:startEvent id="start"/>\n' + flow("start", "accept")
    + user_task("accept", groups="branch:counter_staff") + flow("accept", "fork")
    + '    <bpmn:parallelGateway id="fork"/>\n' + flow("fork", "submit_instructions") + flow("fork", "talk_gw")
    + user_task("submit_instructions", groups="branch:counter_staff", extra='camunda:dueDate="${submit_due}"')
    + flow("submit_instructions", "end_submitted")
    + '    <bpmn:endEvent id="end_submitted"><bpmn:terminateEventDefinition/></bpmn:endEvent>\n'
    + '    <bpmn:exclusiveGateway id="talk_gw" default="f_no_talk"/>\n'
    + flow("talk_gw", "retention_conversation", condition="client_open_to_retention_talk == True")
    + flow("talk_gw", "end_no_talk", flow_id="f_no_talk") + '    <bpmn:endEvent id="end_no_talk"/>\n'
    + user_task("retention_conversation", groups="${service_group}") + flow("retention_conversation", "kept_gw")
    + '    <bpmn:exclusiveGateway id="kept_gw" default="f_not_kept"/>\n'
    + flow("kept_gw", "confirm_withdrawal", condition="retention_outcome == 'retained'")
    + flow("kept_gw", "end_talked", flow_id="f_not_kept") + '    <bpmn:endEvent id="end_talked"/>\n'
    + user_task("confirm_withdrawal", groups="branch:counter_staff") + flow("confirm_withdrawal", "mark_retained")
    + '    <bpmn:serviceTask id="mark_retained" camunda:type="external" camunda:topic="echo"><bpmn:extensionElements>'
    '<camunda:inputOutput><camunda:inputParameter name="outcome">${\'retained\'}</camunda:inputParameter>'
    '</camunda:inputOutput></bpmn:extensionElements></bpmn:serviceTask>\n' + flow("mark_retained", "end_retained")
    + '    <bpmn:endEvent id="end_retained"><bpmn:terminateEventDefinition/></bpmn:endEvent>\n',
    key="retention")


def _open(db, key: str, element: str) -> Task:
    with db.transaction() as s:
        return s.execute(select(Task).where(Task.business_key == key, Task.element_id == element,
                                            Task.status.in_(("open", "claimed")))).scalar_one()


def _do(db, rt, staff, key: str, element: str, who: str, data: dict[str, Any]) -> None:
    task = _open(db, key, element)
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=task.id, actor=staff[who], data=data)


@pytest.mark.sqlite
def test_retention_attempt_and_success_rates_and_the_guard_metric(db, rt, staff, clean_settings):
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(RETENTION), actor=staff["s001"])
    r0 = sh(2026, 3, 2, 10)
    # key: branch, service group, open to a retention talk, A1 due
    requests = {"RET-1": ("HZ01", "HZ01-G1", True, r0 + D), "RET-2": ("HZ01", "HZ01-G1", True, r0 + D),
                "RET-3": ("HZ01", "HZ01-G2", True, r0 + D), "RET-4": ("HZ01", "HZ01-G2", False, r0 + D),
                "RET-5": ("HZ01", "HZ01-G1", False, sh(2026, 3, 30, 10)), "RET-6": ("NB01", "NB01-G1", False, r0 + D)}
    counter = {"HZ01": "s104", "NB01": "s204"}
    with time_machine.travel(r0, tick=False) as clock:
        for key, (branch, group, willing, due) in requests.items():
            with db.transaction() as s:
                # Clients the registry does not hold: their requests come in from the firm's systems.
                instances.start(s, rt, process_key="retention", business_key=key, actor=Actor.system("intake"),
                                data={"branch_code": branch, "client_id": f"X-{key}", "service_group": group,
                                      "submit_due": due.isoformat()})
            _do(db, rt, staff, key, "accept", counter[branch], {"client_open_to_retention_talk": willing})
        clock.move_to(r0 + timedelta(hours=1))
        _do(db, rt, staff, "RET-1", "retention_conversation", "s106", {"retention_outcome": "retained"})
        _do(db, rt, staff, "RET-2", "retention_conversation", "s107", {"retention_outcome": "not_retained"})
        clock.move_to(r0 + timedelta(hours=2))
        _do(db, rt, staff, "RET-1", "confirm_withdrawal", "s104", {"withdrawal_confirmed_by_client": True})
        _do(db, rt, staff, "RET-2", "submit_instructions", "s104", {"submitted": True})  # in time
        clock.move_to(r0 + 2 * D)
        _do(db, rt, staff, "RET-3", "submit_instructions", "s105", {"submitted": True})  # a day late
        # Guard, part 2: complaints about obstruction (alleged at registration, or found).
        Case(db, rt, staff, "CMP-O1").receive("complaint_received", PHONE_CALL)
        _do(db, rt, staff, "CMP-O1", "register", "s003", registration(alleged_violations=["transfer_obstruction"]))
        for key, cause in (("CMP-O2", "transfer_obstruction"), ("CMP-O3", "fees")):
            case = _complaint(db, rt, staff, key, kind="general", until="investigate")
            case.do("investigate", "s106", {"facts_found": "核实", "root_cause": cause, "staff_at_fault": False})
        # Guard, part 3: post-closure callbacks asking "did anyone obstruct you?".
        for key, answer in (("CB-P1", "是"), ("CB-P2", "否")):
            with db.transaction() as s:
                instances.start(s, rt, process_key="callback", business_key=key, actor=Actor.system("crm"),
                                data={"callback_type": "post_closure", "client_id": "C06", "branch_code": "HZ01",
                                      "service_group": "HZ01-G2", "qa_sample_rate": 0})
            _do(db, rt, staff, key, "call_attempt", "s003", REACHED)
            _do(db, rt, staff, key, "verify_identity", "s003", IDENTITY_OK)
            _do(db, rt, staff, key, "questionnaire", "s003", {**ANSWERS_OK, "obstructed": answer})
        clock.move_to(sh(2026, 3, 25, 10))
        now = rt.now()

    with db.transaction() as s:
        march = whole_scope(date(2026, 3, 1), date(2026, 3, 31))
        company = figures.retention_figures(s, scope=march, now=now)
        hz01 = figures.retention_figures(s, scope=replace(march, branch="HZ01"), now=now)
        group = figures.retention_figures(s, scope=replace(march, group="HZ01-G1"), now=now)
        cancelled = s.execute(select(Task.status).where(Task.business_key == "RET-3",
                                                        Task.element_id == "retention_conversation")).scalar_one()
    assert cancelled == "cancelled"  # submitting closed the talk: it was not held
    assert _open(db, "RET-4", "submit_instructions").due_at == r0 + D
    # Held: RET-1, RET-2 (RET-3's was closed unheld). Retained: RET-1, whose client withdrew.
    # Late: RET-3 (submitted a day after its due date), RET-4 (never submitted), RET-6 (NB01);
    # RET-5 is not due yet, RET-1's instructions were withdrawn before they were due.
    assert (hz01.requests, hz01.open_to_talk, hz01.conversations_held, hz01.retained) == (5, 3, 2, 1)
    assert (hz01.attempt_rate, hz01.success_rate) == (pytest.approx(2 / 3), pytest.approx(1 / 2))
    assert (hz01.obstruction_complaints, hz01.post_closure_obstructed, hz01.late_executions) == (2, 1, 2)
    assert hz01.guard_total == 5
    assert (company.requests, company.late_executions, company.guard_total) == (6, 3, 6)
    assert (group.requests, group.open_to_talk, group.conversations_held, group.retained) == (3, 2, 2, 1)
    # Complaints carry no service group: theirs is their client's in the registry. CMP-O2's
    # client C02 is in HZ01-G1; CMP-O1's client C0003 is in no group.
    assert (group.late_executions, group.obstruction_complaints, group.post_closure_obstructed) == (0, 1, 0)


# -- 4. callbacks against the quotas -------------------------------------------------------
CALLBACK_CLIENTS = {"C03": ("NB01", "NB01-G1"), "C06": ("HZ01", "HZ01-G2"), "C08": ("NB01", "NB01-G2")}


def _start_callback(db, rt, key: str, callback_type: str, client: str) -> None:
    branch, group = CALLBACK_CLIENTS[client]
    with db.transaction() as s:
        instances.start(s, rt, process_key="callback", business_key=key, actor=Actor.system("crm"),
                        data={"callback_type": callback_type, "client_id": client, "branch_code": branch,
                              "service_group": group, "qa_sample_rate": 0})


def _answer_callback(db, rt, staff, key: str, **answers: Any) -> None:
    """The client is reached, confirms who they are and answers the questionnaire (K5)."""
    _do(db, rt, staff, key, "call_attempt", "s004", REACHED)
    _do(db, rt, staff, key, "verify_identity", "s004", IDENTITY_OK)
    _do(db, rt, staff, key, "questionnaire", "s004", {**ANSWERS_OK, **answers})


def _run(db, rt, staff, clock: Any, events: list[tuple[datetime, str, Any]]) -> None:
    """Callback events in time order: ("start", (key, type, client)) or ("answer", key)."""
    for at, kind, what in sorted(events, key=lambda e: e[0]):
        clock.move_to(at)
        if kind == "start":
            _start_callback(db, rt, *what)
        else:
            _answer_callback(db, rt, staff, what)


@pytest.mark.sqlite
def test_new_account_callbacks_within_one_calendar_month(db, rt, staff, clean_settings):
    # key, client, opened (callback started), answered
    opened = [("CB-N1", "C08", sh(2026, 1, 5, 10), sh(2026, 1, 20, 10)),
              ("CB-N2", "C03", sh(2026, 1, 6, 10), sh(2026, 2, 10, 10)),
              ("CB-N3", "C06", sh(2026, 1, 7, 10), None),
              ("CB-N4", "C08", sh(2026, 1, 28, 10), None),
              ("CB-N5", "C03", sh(2026, 2, 2, 10), sh(2026, 2, 3, 10))]  # opened in February
    now = sh(2026, 2, 20, 10)
    events = [(at, "start", (key, "new_account", client)) for key, client, at, _ in opened]
    events += [(done, "answer", key) for key, _, _, done in opened if done is not None]
    events += [(sh(2026, 1, 8, 10), "start", ("CB-X", "periodic", "C06"))]  # another type: never counted here
    with time_machine.travel(opened[0][2], tick=False) as clock:
        _run(db, rt, staff, clock, events)
        clock.move_to(now)

    def one_month_on(moment: datetime) -> datetime:
        return moment.replace(month=moment.month + 1)  # every opening day here exists a month later

    january = [o for o in opened if o[2].month == 1]
    on_time = [k for k, _, at, done in january if done is not None and done <= one_month_on(at)]
    late = [k for k, _, at, done in january if done is not None and done > one_month_on(at)]
    overdue = [k for k, _, at, done in january if done is None and one_month_on(at) < now]
    pending = [k for k, _, at, done in january if done is None and one_month_on(at) >= now]
    with db.transaction() as s:
        config = figures.load_config(s)
        figure = figures.new_account_callbacks(s, scope=whole_scope(date(2026, 1, 1), date(2026, 1, 31)), now=now,
                                               config=config)
        nb01 = figures.new_account_callbacks(s, scope=whole_scope(date(2026, 1, 1), date(2026, 1, 31),
                                                                  branch="NB01"), now=now, config=config)
    assert (figure.opened, figure.completed_on_time, figure.completed_late, figure.overdue, figure.pending) == \
        (len(january), len(on_time), len(late), len(overdue), len(pending)) == (4, 1, 1, 1, 1)
    assert figure.completion_rate == pytest.approx(len(on_time) / len(january)) and figure.target == 1.0
    assert (nb01.opened, nb01.completed_on_time, nb01.completed_late, nb01.pending) == (3, 1, 1, 1)


@pytest.mark.sqlite
def test_periodic_callbacks_against_ten_percent_of_last_year_end_active_clients(db, rt, staff, clean_settings):
    calls = [("CB-P1", "C03", sh(2026, 2, 3, 10)), ("CB-P2", "C03", sh(2026, 3, 3, 10)),  # one client, twice
             ("CB-P3", "C08", sh(2026, 3, 4, 10)), ("CB-P4", "C06", sh(2026, 3, 5, 10)),
             ("CB-P5", "C06", None)]  # not reached
    events = [(sh(2026, 2, 2, 10), "start", (key, "periodic", client)) for key, client, _ in calls]
    events += [(at, "answer", key) for key, _, at in calls if at is not None]
    with time_machine.travel(sh(2026, 2, 2, 10), tick=False) as clock:
        _run(db, rt, staff, clock, events)
        clock.move_to(sh(2026, 3, 10, 10))
        with db.transaction() as s:
            owner = staff["s001"]
            settings.set_value(s, key=f"{settings.ACTIVE_CLIENTS}.2025", value="40", actor=owner, now=rt.now())
            settings.set_value(s, key=f"{settings.ACTIVE_CLIENTS}.2025.NB01", value="15", actor=owner, now=rt.now())
    reached = {client for _, client, at in calls if at is not None}
    in_nb01 = reached & {c for c, (branch, _) in CALLBACK_CLIENTS.items() if branch == "NB01"}
    ytd = whole_scope(date(2026, 1, 1), date(2026, 3, 10))
    with db.transaction() as s:
        config = figures.load_config(s)
        company = figures.periodic_callbacks(s, scope=ytd, config=config)
        nb01 = figures.periodic_callbacks(s, scope=replace(ytd, branch="NB01"), config=config)
        group = figures.periodic_callbacks(s, scope=replace(ytd, group="NB01-G1"), config=config)
        february = figures.periodic_callbacks(s, scope=whole_scope(date(2026, 2, 1), date(2026, 2, 28)),
                                              config=config)
        with pytest.raises(InvalidInput, match="calendar year"):
            figures.periodic_callbacks(s, scope=whole_scope(date(2025, 12, 1), date(2026, 1, 31)), config=config)
    assert (company.year, company.base_year_end, company.active_clients) == (2026, 2025, 40)
    assert (company.quota, company.clients_called) == (math.ceil(0.10 * 40), len(reached)) == (4, 3)
    assert company.coverage == pytest.approx(len(reached) / 4)
    assert (nb01.active_clients, nb01.quota, nb01.clients_called) == (15, math.ceil(0.10 * 15), len(in_nb01))
    assert nb01.coverage == pytest.approx(len(in_nb01) / 2)
    assert (group.active_clients, group.quota, group.coverage, group.clients_called) == (None, None, None, 1)
    assert february.clients_called == 1


# -- 5. satisfaction -----------------------------------------------------------------------
@pytest.mark.sqlite
def test_satisfaction_by_branch_and_by_group_from_complaints_and_callbacks(db, rt, staff, clean_settings):
    # (source, business key, client, branch, group, score)
    # C01, not C02 (68): the complaints here are general ones.
    scores = [("complaint", "CMP-S1", "C01", "HZ01", "HZ01-G1", 5),
              ("complaint", "CMP-S2", "C06", "HZ01", "HZ01-G2", 2),
              ("callback", "CB-S1", "C06", "HZ01", "HZ01-G2", 4),
              ("callback", "CB-S2", "C03", "NB01", "NB01-G1", 2),
              ("callback", "CB-S3", "C08", "NB01", "NB01-G2", 5)]
    with time_machine.travel(sh(2026, 3, 2, 10), tick=False) as clock:
        for source, key, client, _, _, score in scores:
            if source == "callback":
                _start_callback(db, rt, key, "periodic", client)
                _answer_callback(db, rt, staff, key, service_satisfaction=score)
                continue
            case = _complaint(db, rt, staff, key, kind="general", client=client)
            case.do("communicate_result", "s003", COMMUNICATED)
            case.do("close_case", "s103", {"closure_reason": "resolved"})
            clock.shift(D + timedelta(minutes=1))  # complaint.satisfaction_delay
            assert firing.fire_due(db, rt) >= 1
            case.do("satisfaction_callback", "s005", {"csat": score, "resolved_in_client_view": score >= 4})
        clock.move_to(sh(2026, 4, 1, 10))  # given in April: outside the period asked for
        _start_callback(db, rt, "CB-S9", "periodic", "C03")
        _answer_callback(db, rt, staff, "CB-S9", service_satisfaction=1)

    def expected(by: int) -> dict[str, dict[str, tuple[int, float | None, float | None]]]:
        result: dict[str, dict[str, tuple[int, float | None, float | None]]] = {}
        for key in sorted({row[by] for row in scores}):
            result[key] = {}
            for source in ("complaint", "callback", "overall"):
                mine = [row[5] for row in scores if row[by] == key and source in (row[0], "overall")]
                result[key][source] = ((len(mine), statistics.mean(mine), sum(1 for v in mine if v >= 4) / len(mine))
                                       if mine else (0, None, None))
        return result

    def check(rows: list[figures.SatisfactionRow], want: dict[str, dict[str, tuple[int, Any, Any]]]) -> None:
        assert [r.key for r in rows] == list(want)
        for row in rows:
            for source in ("complaint", "callback", "overall"):
                stat = getattr(row, source)
                n, mean, share = want[row.key][source]
                assert stat.responses == n
                assert (stat.mean, stat.satisfied_share) == ((None, None) if n == 0 else
                                                             (pytest.approx(mean), pytest.approx(share)))

    with db.transaction() as s:
        config = figures.load_config(s)
        march = whole_scope(date(2026, 3, 1), date(2026, 3, 31))
        check(figures.satisfaction(s, scope=march, by="branch", config=config), expected(3))
        check(figures.satisfaction(s, scope=march, by="group", config=config), expected(4))
        check(figures.satisfaction(s, scope=replace(march, branch="HZ01"), by="group", config=config),
              {k: v for k, v in expected(4).items() if k.startswith("HZ01")})
        with pytest.raises(InvalidInput):
            figures.satisfaction(s, scope=march, by="assignee", config=config)


# -- 6. service-group assessment and the snapshot import -----------------------------------
SNAPSHOT_COLUMNS = ("period_start,period_end,client_id,branch,service_group,assets_start,assets_end,net_inflow,"
                    "traded_amount,avg_assets,referrals")
JAN, FEB = ("2026-01-01", "2026-01-31"), ("2026-02-01", "2026-02-28")
# period, client, branch, group, assets start, end, net inflow, traded, average assets, referrals
SNAPSHOT = [
    (JAN, "C01", "HZ01", "HZ01-G1", 6_000_000, 6_300_000, 100_000, 9_000_000, 6_100_000, 1),
    (JAN, "C02", "HZ01", "HZ01-G1", 2_300_000, 2_250_000, -80_000, 1_000_000, 2_280_000, 0),
    (JAN, "C06", "HZ01", "HZ01-G2", 380_000, 420_000, 20_000, 2_400_000, 400_000, 2),
    (JAN, "C03", "NB01", "NB01-G1", 1_500_000, 1_650_000, 50_000, 8_000_000, 1_560_000, 0),
    (JAN, "C04", "NB01", "NB01-G1", 720_000, 700_000, 0, 2_000_000, 710_000, 0),
    (JAN, "C10", "HZ01", "", 6_000, 6_100, 0, 0, 6_050, 0),  # branch pool: not ranked
    (FEB, "C01", "HZ01", "HZ01-G1", 6_300_000, 6_000_000, -200_000, 5_000_000, 6_150_000, 0),
    (FEB, "C06", "HZ01", "HZ01-G2", 420_000, 480_000, 40_000, 3_000_000, 450_000, 1),
]


@pytest.fixture
def groups(db, rt):
    """The demo's branches, staff and service groups: a snapshot row must name them."""
    with db.transaction() as s:
        report = registry_import.import_files(
            s, files={kind: (path.name, path.read_bytes()) for kind, path in demo.FILES.items() if kind != "clients"},
            actor=Actor.system("test"), now=rt.now())
    assert report.rejected == 0


def _csv(rows: list[tuple[Any, ...]]) -> str:
    return SNAPSHOT_COLUMNS + "\n" + "".join(",".join(str(v) for v in (*period, *rest)) + "\n"
                                             for period, *rest in rows)


def _assess(rows: list[tuple[Any, ...]], weights: dict[str, float], highlight: int) -> dict[str, dict[str, Any]]:
    """The assessment of one period by the README's definition, from the rows themselves."""
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    for _, _, _, group, a0, a1, inflow, traded, avg, referrals in rows:
        if not group:
            continue
        g = groups[group]
        for name, value in (("a0", a0), ("a1", a1), ("inflow", inflow), ("traded", traded), ("avg", avg),
                            ("referrals", referrals), ("clients", 1)):
            g[name] += value
    result = {}
    for key, g in groups.items():
        growth = g["a1"] - g["a0"]
        result[key] = {"growth": growth, "new_money": g["inflow"], "appreciation": growth - g["inflow"],
                       "growth_rate": growth / g["a0"], "turnover": g["traded"] / g["avg"],
                       "referral_rate": g["referrals"] / g["clients"], "clients": g["clients"]}
    n = len(result)
    for metric, weight_name in (("growth_rate", "growth"), ("turnover", "turnover"), ("referral_rate", "referrals")):
        ordered = sorted(result, key=lambda k: result[k][metric])  # distinct values in this data
        for position, key in enumerate(ordered):
            result[key]["score"] = result[key].get("score", 0) + weights[weight_name] * (position / (n - 1) if n > 1
                                                                                         else 1)
    for position, key in enumerate(sorted(result, key=lambda k: -result[k]["score"]), start=1):
        result[key]["rank"] = position
        result[key]["highlight"] = ("top" if position <= highlight else
                                    "bottom" if position > max(n - highlight, highlight) else None)
    return result


@pytest.mark.sqlite
def test_service_group_assessment_splits_growth_ranks_groups_and_reads_imported_snapshots(db, rt, clean_settings,
                                                                                          groups):
    admin = Actor.system("test")
    with db.transaction() as s:
        report = snapshots.import_csv(s, data=_csv(SNAPSHOT).encode("utf-8"), actor=admin, now=rt.now())
    assert (report.created, report.updated, report.unchanged, report.rejected) == (len(SNAPSHOT), 0, 0, [])
    with db.transaction() as s:
        config = figures.load_config(s)
        first_quarter = figures.group_assessment(s, scope=whole_scope(date(2026, 1, 1), date(2026, 3, 31)),
                                                 config=config)
        hz01 = figures.group_assessment(s, scope=whole_scope(date(2026, 1, 1), date(2026, 1, 31), branch="HZ01"),
                                        config=config)
        g2 = figures.group_assessment(s, scope=whole_scope(date(2026, 1, 1), date(2026, 1, 31), group="HZ01-G2"),
                                      config=config)
    assert [(p.period_start, p.period_end) for p in first_quarter] == [(date(2026, 1, 1), date(2026, 1, 31)),
                                                                       (date(2026, 2, 1), date(2026, 2, 28))]
    weights = {"growth": 0.5, "turnover": 0.3, "referrals": 0.2}
    for assessment, period in zip(first_quarter, (JAN, FEB), strict=True):
        want = _assess([r for r in SNAPSHOT if r[0] == period], weights, highlight=2)
        got = {g.group: g for g in assessment.groups}
        assert set(got) == set(want)
        for key, w in want.items():
            g = got[key]
            assert (g.growth, g.new_money, g.appreciation, g.clients) == \
                (Decimal(w["growth"]), Decimal(w["new_money"]), Decimal(w["appreciation"]), w["clients"])
            assert (g.growth_rate, g.turnover, g.referral_rate, g.score) == pytest.approx(
                (w["growth_rate"], w["turnover"], w["referral_rate"], w["score"]))
            assert (g.rank, g.highlight) == (w["rank"], w["highlight"])
        assert [g.rank for g in assessment.groups] == sorted(g.rank for g in assessment.groups)
    # January, three groups: HZ01-G2 grew fastest (+10.5 %), turned over most and referred most.
    assert [(g.group, g.rank, g.highlight) for g in first_quarter[0].groups] == [
        ("HZ01-G2", 1, "top"), ("NB01-G1", 2, "top"), ("HZ01-G1", 3, "bottom")]
    # A branch ranks its own groups; a group asked for keeps its rank among its branch's groups.
    want = _assess([r for r in SNAPSHOT if r[0] == JAN and r[2] == "HZ01"], weights, highlight=2)
    assert [(g.group, g.rank) for g in hz01[0].groups] == sorted(((k, w["rank"]) for k, w in want.items()),
                                                                key=lambda item: item[1])
    assert [(g.group, g.rank) for g in g2[0].groups] == [("HZ01-G2", want["HZ01-G2"]["rank"])]


def test_the_snapshot_import_reports_bad_rows_and_applies_a_corrected_file_once(db, rt, groups):
    admin = Actor.system("test")
    good = [(JAN, "C01", "HZ01", "HZ01-G1", 100, 120, 10, 500, 110, 0)]
    text = (_csv(good)
            + "2026-01-01,2026-01-31,C02,HZ01,HZ01-G1,abc,1,0,0,1,0\n"  # not a number
            + "2026-01-31,2026-01-01,C03,NB01,,1,1,0,0,1,0\n"  # ends before it starts
            + "2026-01-01,2026-01-31,C04,NB01,,-5,1,0,0,1,0\n"  # negative assets
            + "2026-01-01,2026-01-31,C01,HZ01,HZ01-G1,1,1,0,0,1,0\n"  # the same client and period again
            + "2026-01-01,2026-01-31,C05,SX01,SX01-G1,100,300,0,0,,\n")  # average and referrals left out
    with db.transaction() as s:
        report = snapshots.import_csv(s, data=text, actor=admin, now=rt.now(), source="jan.csv")
    assert (report.created, report.updated, report.unchanged) == (2, 0, 0)
    assert [(e.line, e.column) for e in report.rejected] == [(3, "assets_start"), (4, "period_end"),
                                                             (5, "assets_start"), (6, "client_id")]
    assert report.rejected[0].format("jan.csv").startswith("jan.csv:3 assets_start: ")
    with db.transaction() as s:
        c05 = s.execute(select(ClientSnapshot).where(ClientSnapshot.client_id == "C05")).scalar_one()
        assert (c05.avg_assets, c05.referrals, c05.service_group_key) == (Decimal("200.00"), 0, "SX01-G1")
    corrected = [(JAN, "C01", "HZ01", "HZ01-G1", 100, 125, 10, 500, 110, 0)]
    with db.transaction() as s:
        again = snapshots.import_csv(s, data=_csv(corrected), actor=admin, now=rt.now())
        same = snapshots.import_csv(s, data=_csv(corrected), actor=admin, now=rt.now())
        assert s.execute(select(ClientSnapshot.assets_end).where(ClientSnapshot.client_id == "C01")).scalar_one() \
            == Decimal("125.00")
    assert (again.created, again.updated, again.unchanged) == (0, 1, 0)
    assert (same.created, same.updated, same.unchanged) == (0, 0, 1)
    with db.transaction() as s:
        wrong_header = snapshots.import_csv(s, data="client_id,branch,assets\nC01,HZ01,1\n", actor=admin,
                                            now=rt.now())
        with pytest.raises(PermissionDenied):
            snapshots.import_csv(s, data=_csv(good), actor=Actor("clerk", frozenset({"clerks"})), now=rt.now())
    assert {e.column for e in wrong_header.rejected} >= {"period_start", "assets_start", "assets"}
    assert wrong_header.created == 0


@pytest.mark.sqlite
def test_a_snapshot_row_outside_the_registry_is_rejected_and_never_counted(db, rt, clean_settings, groups):
    admin = Actor.system("test")
    good = [r for r in SNAPSHOT if r[0] == JAN]
    outside = [
        (JAN, "C11", "XX99", "", 1_000_000, 9_000_000, 0, 50_000_000, 5_000_000, 5),  # no such branch
        (JAN, "C12", "HZ01", "HZ01-G9", 100, 9_000_000, 0, 50_000_000, 5_000_000, 5),  # no such group
        (JAN, "C13", "HZ01", "NB01-G1", 100, 9_000_000, 0, 50_000_000, 5_000_000, 5),  # NB01's group, not HZ01's
        (JAN, "C14", "XX99", "HZ01-G1", 100, 9_000_000, 0, 50_000_000, 5_000_000, 5),  # HZ01-G1 exists; XX99 does not
    ]
    with db.transaction() as s:
        report = snapshots.import_csv(s, data=_csv(good + outside), actor=admin, now=rt.now(), source="jan.csv")
    first_bad = len(good) + 2  # the header is line 1
    assert (report.created, report.updated, report.unchanged) == (len(good), 0, 0)
    assert [e.format("jan.csv") for e in report.rejected] == [
        f"jan.csv:{first_bad} branch: no branch 'XX99' in the client registry",
        f"jan.csv:{first_bad + 1} service_group: no service group 'HZ01-G9' in the client registry",
        f"jan.csv:{first_bad + 2} service_group: service group NB01-G1 belongs to NB01, not to HZ01",
        f"jan.csv:{first_bad + 3} branch: no branch 'XX99' in the client registry",
    ]
    with db.transaction() as s:
        stored = set(s.execute(select(ClientSnapshot.client_id)).scalars())
        (event,) = s.execute(select(AuditEvent).where(AuditEvent.kind == "figures.snapshot_imported")).scalars()
        (january,) = figures.group_assessment(s, scope=whole_scope(date(2026, 1, 1), date(2026, 1, 31)),
                                              config=figures.load_config(s))
    assert stored == {r[1] for r in good}
    assert [line for line, _, _ in event.data["rejected"]] == [first_bad + n for n in range(4)]
    # The groups' figures are the good rows' alone: the rejected ones' 9 million of growth is nowhere.
    want = _assess(good, {"growth": 0.5, "turnover": 0.3, "referrals": 0.2}, highlight=2)
    assert {g.group: (g.growth, g.clients) for g in january.groups} == {
        k: (Decimal(w["growth"]), w["clients"]) for k, w in want.items()}


# -- who may see what, settings, arithmetic --------------------------------------------------
def test_figures_are_for_supervisors_compliance_and_branch_heads_and_branch_staff_see_their_branch():
    now = sh(2026, 3, 25, 10)
    head = Actor("s101", frozenset({"branch_head", "HZ01:branch_head"}), "HZ01")
    assert figures.scope_for(head, now=now).branch == "HZ01"
    assert figures.scope_for(head, branch="HZ01", group="HZ01-G1", now=now).group == "HZ01-G1"
    with pytest.raises(PermissionDenied):
        figures.scope_for(head, branch="NB01", now=now)
    hq_compliance = Actor("s006", frozenset({"compliance"}))
    assert figures.scope_for(hq_compliance, branch="NB01", now=now).branch == "NB01"
    assert figures.scope_for(Actor("s002", frozenset({"supervisor"})), now=now).branch is None
    # The process owners receive the breach reports: the firm's figures at headquarters.
    assert figures.scope_for(Actor("s001", frozenset({"process_owner"})), now=now).branch is None
    with pytest.raises(PermissionDenied):
        figures.scope_for(Actor("s104", frozenset({"counter_staff", "HZ01-G2"}), "HZ01"), now=now)
    scope = figures.scope_for(hq_compliance, now=now)  # the year to date, Shanghai days
    assert (scope.start, scope.end) == (sh(2026, 1, 1), sh(2026, 3, 26))
    assert (scope.first_day, scope.last_day) == (date(2026, 1, 1), date(2026, 3, 25))
    with pytest.raises(InvalidInput):
        figures.scope_for(hq_compliance, first=date(2026, 3, 2), last=date(2026, 3, 1), now=now)


def test_settings_override_defaults_are_checked_and_audited(db, rt, clean_settings):
    owner = Actor("owner", frozenset({"process_owner"}))
    with db.transaction() as s:
        settings.set_value(s, key="figures.ageing_buckets", value="2,5,10,20", actor=owner, now=rt.now())
        settings.set_value(s, key="complaint.sla.resolve.general", value="10 WD", actor=owner, now=rt.now())
        settings.set_value(s, key="figures.group_score.weights", value="growth=1", actor=owner, now=rt.now())
        for key, value in (("figures.ageing_buckets", "3,1"), ("figures.ageing_buckets", "1.5,3"),
                           ("complaint.sla.resolve.general", "ten days"),
                           ("complaint.sla.regulator_margin", "2 CD"), ("callback.periodic.min_ratio", "1.5"),
                           ("figures.group_score.weights", "luck=1"), (f"{settings.ACTIVE_CLIENTS}.2025", "-3"),
                           ("figures.unknown", "1")):
            with pytest.raises(InvalidInput):
                settings.set_value(s, key=key, value=value, actor=owner, now=rt.now())
        with pytest.raises(PermissionDenied):
            settings.set_value(s, key="figures.ageing_buckets", value="1", actor=Actor("li", frozenset({"clerks"})),
                                now=rt.now())
    with db.transaction() as s:
        config = figures.load_config(s)
        audited = s.execute(select(AuditEvent.data).where(AuditEvent.kind == settings.AUDIT_KIND)
                            .order_by(AuditEvent.seq)).scalars().all()
    assert config.ageing_buckets == (2, 5, 10, 20)
    assert config.resolve["general"] == settings.Target(10, Unit.WORKING_DAYS)
    assert config.resolve["major"] == settings.Target(30, Unit.WORKING_DAYS)  # the default
    assert config.score_weights == {"growth": 1.0}
    assert [(e["key"], e["before"], e["after"]) for e in audited] == [
        ("figures.ageing_buckets", None, "2,5,10,20"), ("complaint.sla.resolve.general", None, "10 WD"),
        ("figures.group_score.weights", None, "growth=1")]


def test_percentile_is_the_inclusive_linear_interpolation():
    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0]
    assert figures.percentile(values, 0.5) == statistics.median(values)
    assert figures.percentile(values, 0.9) == pytest.approx(statistics.quantiles(values, n=10, method="inclusive")[8])
    assert figures.percentile([7.0], 0.9) == 7.0 and figures.percentile([], 0.5) is None
