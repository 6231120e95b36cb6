"""docs/permissions.md's table, row by row, against the engine: for each role, every action
is tried on a set of clients, cases, timers and tasks spread over the scopes, and what the
engine allows must be exactly what the table's cell says. A row that stops being true fails.

The scene (the demo registry; the persona is user ``persona`` of branch HZ01, or of
headquarters for an "(HQ)" row): probe cases (``tests/support/probe.py``) of C01 (HZ01-G1),
C06 (HZ01-G2), C10 (HZ01, no group) and C04 (NB01); one of C05 (SX01) whose step the persona
holds; one of C03 (NB01) the persona started; each running and, a copy of it, failed; and a
new-account callback of C08 (NB01), its first call offered to the call centre.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from engine.access import client_access, identity
from engine.access.identity import Actor
from engine.access.roles import INTEGRATION, JOB_ROLES, SYSTEM_ROLES
from engine.brokerage import figures
from engine.calendars import SHANGHAI
from engine.config import PROJECT_ROOT
from engine.errors import NotFound, PermissionDenied
from engine.models import ProcessInstance, Task, Timer, TimerStatus
from engine.process import deployments, instances, messages, tasks
from engine.timers import firing
from tests.support import probe
from tests.support.bpmn import bundle_of

pytestmark = pytest.mark.sqlite

PAGE = PROJECT_ROOT / "docs" / "permissions.md"
PERSONA, BRANCH = "persona", "HZ01"
CLIENTS = {"C01": "G1", "C06": "G2", "C10": "pool", "C04": "NB", "C05": "taken", "C03": "started", "C08": "callback"}
PROBES = ("G1", "G2", "pool", "NB", "taken", "started")
CASES = (*PROBES, "callback")


# -- the table ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    roles: tuple[str, ...]
    at_hq: bool
    cells: dict[str, frozenset[str]]

    def __str__(self) -> str:
        return f"{', '.join(self.roles)} ({'HQ' if self.at_hq else 'branch'})"


def read_table() -> list[Row]:
    lines = PAGE.read_text(encoding="utf-8").split("## The table", 1)[1].splitlines()
    table = [line for line in lines[:next(i for i, line in enumerate(lines) if line.startswith("The scopes"))]
             if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[0] == "role", header
    rows = []
    for line in table[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        roles = tuple(re.findall(r"`([^`]+)`", cells[0]))
        where = re.search(r"\((branch|HQ)\)", cells[0])
        assert roles and where, f"a role cell names roles in backticks and (branch) or (HQ): {cells[0]!r}"
        rows.append(Row(roles, where.group(1) == "HQ",
                        {action: frozenset(s.strip() for s in cell.split(",")) for action, cell in
                         zip(header[1:], cells[1:], strict=True)}))
    return rows


ROWS = read_table()


def _personas(row: Row) -> list[Actor]:
    """One persona per role of the row: the role group, and its branch-qualified twin."""
    branch = None if row.at_hq else BRANCH
    found = []
    for role in row.roles:
        groups = {"HZ01-G1"} if role == "service_group" else {role, *([f"{BRANCH}:{role}"] if branch else [])}
        found.append(Actor(username=PERSONA, groups=frozenset(groups), branch_code=branch))
    return found


# -- the scene ----------------------------------------------------------------------------------
class _Undo(Exception):
    """Raised to roll back a tried action."""


HANDLER = Actor(username="handler", groups=frozenset({probe.HANDLERS}))


def _build(db, rt) -> dict[str, Any]:
    probe.deploy(db, rt)
    with db.transaction() as s:
        identity.create_user(s, username="handler", display_name="经办人", now=rt.now(), groups=[probe.HANDLERS])
    running, failed = {}, {}
    for client, name in CLIENTS.items():
        if name == "callback":
            continue
        holder = PERSONA if name == "taken" else None
        running[name] = probe.start(db, rt, f"P-{name}", client, holder=holder)
        failed[name] = probe.start(db, rt, f"P-{name}-F", client, holder=holder)
        probe.fail(db, rt, failed[name], HANDLER)
    with db.transaction() as s:
        s.execute(update(ProcessInstance).where(ProcessInstance.id.in_([running["started"], failed["started"]]))
                  .values(started_by=PERSONA))
        account_system = Actor(username="account_system", groups=frozenset({INTEGRATION}))
        callback = messages.correlate(s, rt, name="account_opened", correlation_key=None, actor=account_system,
                                      payload={"client_id": "C08", "opened_at": "2026-03-02"}).id
    with db.transaction() as s:
        holds = {name: s.execute(select(Task.id).where(Task.instance_id == i, Task.element_id == "hold")).scalar_one()
                 for name, i in running.items()}
        timers = {name: s.execute(select(Timer.id).where(Timer.instance_id == i, Timer.element_id == "nap",
                                                         Timer.status == TimerStatus.WAITING)).scalar_one()
                  for name, i in running.items()}
        schedules = list(s.execute(select(Timer.id).where(Timer.instance_id.is_(None),
                                                          Timer.status == TimerStatus.WAITING)).scalars())
        with_timers = set(s.execute(select(Timer.instance_id).where(Timer.status == TimerStatus.WAITING,
                                                                    Timer.instance_id.is_not(None))).scalars())
    assert schedules, "the demo's schedules have timers"
    cases = {name: {"running": running.get(name), "failed": failed.get(name)} for name in PROBES}
    cases["callback"] = {"running": callback, "failed": None}
    return {"cases": cases, "holds": holds, "timers": timers, "schedules": schedules,
            "with_timers": sorted(with_timers)}


@pytest.fixture
def scene(db, rt, snapshot, demo_loaded) -> dict[str, Any]:
    built: dict[str, Any] = snapshot(f"permissions {rt.now().astimezone(SHANGHAI):%Y-%m-%d %H}h",
                                     lambda: _build(db, rt))
    return built


# -- what the engine allows -----------------------------------------------------------------------
def _allowed(db, attempt: Callable[[Any], Any]) -> bool:
    """Whether the engine lets the attempt through; rolled back either way."""
    try:
        with db.transaction() as s:
            attempt(s)
            raise _Undo
    except _Undo:
        return True
    except (NotFound, PermissionDenied):
        return False


def _observed(db, rt, scene: dict[str, Any], who: Actor, action: str) -> dict[str, set[str]]:
    """What ``who`` may do, per check of the action (a cell may be checked several ways)."""
    cases, due = scene["cases"], rt.now() + timedelta(days=1)
    running = {n: c["running"] for n, c in cases.items()}
    failed = {n: c["failed"] for n, c in cases.items() if c["failed"]}

    def over(ids: dict[str, int], attempt: Callable[[Any, int], Any]) -> set[str]:
        return {name for name, key in ids.items() if _allowed(db, lambda s, key=key: attempt(s, key))}

    def start_for(s: Any, client: str) -> Any:
        return instances.start(s, rt, process_key="callback", business_key=None, actor=who,
                               data={"callback_type": "periodic", "client_id": client})

    def listed(s: Any) -> set[str]:
        seen = firing.visible(s, actor=who, limit=1000)
        by_id = {i: n for n, i in running.items()}
        return ({by_id[t.instance_id] for t in seen if t.instance_id in by_id}
                | ({"schedules"} if any(t.instance_id is None for t in seen) else set()))

    clients = {client: client for client in CLIENTS}
    if action == "read a client":
        return {"get_client": {CLIENTS[c] for c in over(clients, lambda s, c: client_access.get_client(
            s, c, actor=who, now=rt.now()))}}
    if action == "start a case for a client":
        return {"start": {CLIENTS[c] for c in over(clients, start_for)}}
    if action == "read a case":
        with db.transaction() as s:
            listed_cases = {i.id for i in instances.get_all(s, actor=who, limit=1000)}
        return {"get": over(running, lambda s, i: instances.get(s, i, actor=who)),
                "get_all": {n for n, i in running.items() if i in listed_cases}}
    if action == "message a running case":
        return {"correlate": over({n: i for n, i in running.items() if n in PROBES}, lambda s, i: messages.correlate(
            s, rt, name=probe.MESSAGE, correlation_key=_key(s, i), actor=who, payload={}))}
    if action == "cancel or retry a case, correct its data":
        return {"cancel": over({n: i for n, i in running.items() if n in PROBES}, lambda s, i: instances.cancel(
                    s, rt, instance_id=i, actor=who, reason="测试")),
                "retry": over(failed, lambda s, i: instances.retry(s, rt, instance_id=i, actor=who)),
                "correct": over(failed, lambda s, i: instances.correct_data(
                    s, rt, instance_id=i, actor=who, set={"amount": 1}, reason="测试"))}
    if action == "move a case's timer":
        moved = over(scene["timers"], lambda s, t: firing.reschedule(s, rt, timer_id=t, due_at=due, actor=who))
        schedules = over({str(t): t for t in scene["schedules"]},
                         lambda s, t: firing.reschedule(s, rt, timer_id=t, due_at=due, actor=who))
        return {"reschedule": moved | ({"schedules"} if schedules else set())}
    if action == "list timers":
        seen: set[str] = set()
        _allowed(db, lambda s: seen.update(listed(s)))
        return {"visible": seen}
    if action == "assign a task":
        return {"assign": over(scene["holds"], lambda s, t: tasks.assign(
            s, rt, task_id=t, username="handler", actor=who))}
    if action == "deploy or check a bundle":
        lint = _allowed(db, lambda s: deployments.lint(s, rt, bundle_of(probe.XML), actor=who))
        return {"lint": {"all"} if lint else set()}
    if action == "read figures":
        def reach(branch: str | None) -> str | None:
            try:
                scope = figures.scope_for(who, branch=branch, now=rt.now())
            except PermissionDenied:
                return None
            return "all" if scope.branch in (None, "NB01") else "branch" if scope.branch == BRANCH else scope.branch
        # The figures asked for the firm (narrowed to a branch reader's branch), and another
        # branch's asked by name (refused to a branch reader).
        firm, other = reach(None), reach("NB01")
        return {"firm": {firm} if firm else set(),
                "another branch": {other} if other else ({"branch"} if firm == "branch" else set())}
    raise AssertionError(f"the table has a column the test does not know: {action!r}")


def _key(session: Any, instance_id: int) -> str:
    instance = session.get(ProcessInstance, instance_id)
    assert instance is not None
    return instance.business_key


def _expected(scene: dict[str, Any], who: Actor, action: str, scopes: frozenset[str]) -> set[str]:
    """What the cell says, over the scene: names of clients' or cases' places, ``schedules``,
    or ``all`` for deploying."""
    unknown = scopes - {"all", "branch", "group", "pool", "assigned", "callbacks", "started", "took part",
                        "schedules", "none"}
    assert not unknown, f"unknown scope(s) {sorted(unknown)} in the column {action!r}"
    assert "none" not in scopes or scopes == {"none"}, f"'none' with other scopes in {action!r}"
    if action == "deploy or check a bundle":
        return {"all"} if "all" in scopes else set()
    if action == "read figures":
        return {"all"} if "all" in scopes else {"branch"} if "branch" in scopes else set()
    places = {"all": set(CASES), "branch": {"G1", "G2", "pool"}, "group": {"G1"}, "pool": {"pool"},
              "assigned": {"taken"}, "callbacks": {"callback"}, "started": {"started"},
              "took part": {"taken"} | ({"callback"} if "call_center_agent" in who.groups else set())}
    expected = {place for scope in scopes - {"schedules", "none"} for place in places[scope]}
    if action in ("message a running case", "cancel or retry a case, correct its data", "move a case's timer",
                  "assign a task"):
        expected &= set(PROBES)  # the callback waits for no message; the probes carry the steps and timers
    if action == "list timers":
        with_timers = {n for n, c in scene["cases"].items() if c["running"] in scene["with_timers"]}
        expected &= with_timers
    if "schedules" in scopes:
        expected.add("schedules")
    return expected


@pytest.mark.parametrize("row", ROWS, ids=str)
def test_each_row_of_the_permission_table_is_what_the_engine_does(db, rt, scene, row):
    wrong = []
    for who in _personas(row):
        for action, scopes in row.cells.items():
            expected = _expected(scene, who, action, scopes)
            for check, allowed in _observed(db, rt, scene, who, action).items():
                if allowed != expected:
                    wrong.append(f"{sorted(who.groups)} {action} ({check}): the table says {sorted(expected)}, "
                                 f"the engine allows {sorted(allowed)}")
    assert not wrong, "\n".join(wrong)


def test_the_table_covers_every_role_the_engine_knows():
    named = {role for row in ROWS for role in row.roles}
    assert named == {*JOB_ROLES, *SYSTEM_ROLES, "service_group"}


def test_a_cell_that_is_not_true_fails(db, rt, scene):
    """The check has teeth: a counter clerk's row that claims every case is refused."""
    row = next(r for r in ROWS if r.roles == ("counter_staff",))
    (who,) = _personas(row)
    claimed = _expected(scene, who, "read a case", frozenset({"all"}))
    assert _observed(db, rt, scene, who, "read a case")["get"] != claimed

