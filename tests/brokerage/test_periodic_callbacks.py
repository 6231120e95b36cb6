"""The quarterly periodic callback batch (存量定期回访, brief §2.3 "Sampling rules for
periodic"): the quota from the active-client base, stratification by branch and class,
VIP and elderly clients over-sampled, recently called, dormant and suspended clients left
out, one run per schedule slot, and the cases it starts. Demo registry (brief §4) plus
clients made here; time moves with time-machine.

The expected selections are computed here from the documented rule (SHA-256 draws,
largest remainder, Efraimidis–Spirakis keys), not with the module's own functions."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
import time_machine
from sqlalchemy import delete, or_, select

from engine.access import identity
from engine.access.identity import Actor
from engine.brokerage import demo, periodic_callbacks, registry, registry_import, settings
from engine.brokerage.periodic_callbacks import Candidate
from engine.calendars import SHANGHAI, Unit
from engine.errors import InvalidInput, PermissionDenied, ProcessNotFound
from engine.models import AuditEvent, Client, ProcessInstance, Setting, SlaPolicy, Task
from engine.process import instances, tasks
from engine.sla import calendar_store
from engine.timers import firing, schedules
from tests.conftest import load_demo

# Process and diagram logic: the same on either store (SQLite runs the processes end to end
# in tests/api/test_process_end_to_end.py).
pytestmark = pytest.mark.store_independent

ADMIN = Actor.system("test-admin")
AGENT = "s003"  # 高晨, call-centre agent (brief §4.2)
Q3 = datetime(2025, 7, 1, 10, tzinfo=SHANGHAI)  # Tuesday, the first working day of 2025 Q3
Q4 = datetime(2025, 10, 9, 10, tzinfo=SHANGHAI)  # Thursday, the first after the National Day holiday
REFUSED = {"attempt_at": "2025-01-01T10:05:00+08:00", "dialled_number_masked": "139****0000",
           "result": "refused", "recording_id": "REC-1"}
Stratum = tuple[str, str]


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


@pytest.fixture(autouse=True)
def clean_settings(db):
    """bpm_setting is kept between tests (conftest): leave no batch setting or year-end
    count behind, and find none left by another test."""
    def clean() -> None:
        with db.transaction() as s:
            s.execute(delete(Setting).where(or_(Setting.key.in_(list(periodic_callbacks.CONFIG_KEYS)),
                                                Setting.key.like(f"{settings.ACTIVE_CLIENTS}.%"))))
    clean()
    yield
    clean()


@pytest.fixture
def december_demo(db, rt, snapshot) -> None:
    """The demo loaded in December 2024, before every run below; its own schedules are not fired here."""
    load_demo(db, rt, snapshot, at=sh(2024, 12, 2, 12))


def _set(db, rt, key: str, value: str) -> None:
    with db.transaction() as s:
        settings.set_value(s, key=key, value=value, actor=ADMIN, now=rt.now())


def _add_clients(db, rt, *clients: dict[str, Any]) -> None:
    """Clients made through the registry; their class is written as the evaluation would."""
    with db.transaction() as s:
        for c in clients:
            values = {"client_id": c["id"], "name": c["id"], "branch": c["branch"],
                      "birth_date": c.get("born", date(1985, 6, 1)), "vip_tier": c.get("tier"),
                      "account_status": c.get("status")}
            registry.create_client(s, values={k: v for k, v in values.items() if v is not None}, actor=ADMIN,
                                   now=rt.now())
            s.get(Client, c["id"]).classification = c.get("cls")


def _many(prefix: str, branch: str, cls: str, n: int) -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i:02d}", "branch": branch, "cls": cls} for i in range(1, n + 1)]


def _run(db, rt, at: datetime = Q3, seed: str = "test-seed") -> periodic_callbacks.Outcome:
    with time_machine.travel(at, tick=False), db.transaction() as s:
        return periodic_callbacks.run(s, rt, at=at, seed=seed)


def _batches(db) -> list[dict[str, Any]]:
    with db.transaction() as s:
        return [e.data for e in s.execute(select(AuditEvent).where(AuditEvent.kind == "callback.periodic_batch")
                                          .order_by(AuditEvent.id)).scalars()]


def _callbacks(db) -> dict[str, ProcessInstance]:
    """Callback cases by business key."""
    with db.transaction() as s:
        rows = s.execute(select(ProcessInstance).where(ProcessInstance.process_key == "callback")).scalars()
        return {r.business_key: r for r in rows}


def _started_clients(db, outcome: periodic_callbacks.Outcome) -> set[str]:
    cases = _callbacks(db)
    return {cases[key].client_id for key in outcome.started}


# -- the rule, computed independently ---------------------------------------------------------
def _u(seed: str, name: str) -> float:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2**64


def _age(born: date, on: date) -> int:
    years = on.year - born.year
    return years - 1 if (on.month, on.day) < (born.month, born.day) else years


def _frame(db, on: date, *, factor: float = 2.0, called: set[str] = frozenset()) -> dict[Stratum, dict[str, float]]:
    """Active clients not in ``called``, by (branch, class), with their draw weights."""
    frame: dict[Stratum, dict[str, float]] = {}
    with db.transaction() as s:
        for c in s.execute(select(Client).where(Client.account_status == "active")).scalars():
            if c.client_id in called:
                continue
            heavy = c.vip_tier is not None or (c.birth_date is not None and _age(c.birth_date, on) >= 65)
            frame.setdefault((c.branch_code, c.classification or "unclassified"), {})[c.client_id] = (
                factor if heavy else 1.0)
    return frame


def _counts(sizes: dict[Stratum, int], quota: int, seed: str) -> dict[Stratum, int]:
    total = sum(sizes.values())
    quota = min(quota, total)
    exact = {k: Fraction(quota * n, total) for k, n in sizes.items()}
    counts = {k: math.floor(v) for k, v in exact.items()}
    by_remainder = sorted(sizes, key=lambda k: (counts[k] - exact[k], -_u(seed, f"stratum:{k[0]}:{k[1]}")))
    for k in by_remainder[:quota - sum(counts.values())]:
        counts[k] += 1
    return counts


def _expected(frame: dict[Stratum, dict[str, float]], quota: int, seed: str) -> dict[Stratum, set[str]]:
    counts = _counts({k: len(v) for k, v in frame.items()}, quota, seed)
    return {k: set(sorted(weights, key=lambda c: math.log(_u(seed, c)) / weights[c], reverse=True)[:counts[k]])
            for k, weights in frame.items()}


# -- quota ----------------------------------------------------------------------------------
def test_the_quota_is_the_quarterly_ratio_of_the_active_clients_rounded_up(db, rt, december_demo):
    _add_clients(db, rt, *_many("X", "HZ01", "E", 31))  # 10 demo clients + 31 = 41 active
    outcome = _run(db, rt)
    # 2.5 % of 41 is 1.025: two clients, not one.
    assert (outcome.base, outcome.base_source) == (41, "registry")
    assert outcome.quota == math.ceil(Decimal("0.025") * 41) == 2
    assert len(outcome.selected) == len(outcome.started) == 2 and outcome.shortfall == 0
    [record] = _batches(db)
    assert (record["quota"], record["base"], record["settings"]["callback.periodic.quarterly_ratio"]) == (
        2, 41, "0.025")


def test_the_prior_year_end_count_given_for_the_figures_is_the_base_when_set(db, rt, december_demo):
    # The account system's 2024 year-end count of active clients, the one the coverage
    # figure is measured against; the registry's 10 clients cannot fill its quota.
    _set(db, rt, f"{settings.ACTIVE_CLIENTS}.2024", "1000")
    _set(db, rt, "callback.periodic.quarterly_ratio", "0.02")
    outcome = _run(db, rt)
    assert (outcome.base, outcome.base_source) == (1000, "callback.periodic.active_clients.2024")
    assert outcome.quota == 20
    assert len(outcome.started) == outcome.eligible == 10 and outcome.shortfall == 10
    assert _batches(db)[0]["shortfall"] == 10


# -- strata -----------------------------------------------------------------------------------
def test_the_quota_is_shared_across_branches_and_classes_in_proportion(db, rt, december_demo):
    # Frame: the 10 demo clients (one per branch × class) plus 19 HZ01 A+ (20 with C01),
    # 29 NB01 C (30 with C04) and 14 SX01 F (15 with C09): 72 clients. At 10 %, the quota is
    # ceil(7.2) = 8: exact shares 2.22, 3.33, 1.67 and 0.11 for each other demo client;
    # floors 2 + 3 + 1 = 6, and the 2 left go to the largest remainders, .67 (SX01 F) and .33
    # (NB01 C).
    _add_clients(db, rt, *_many("HA", "HZ01", "A+", 19), *_many("NC", "NB01", "C", 29), *_many("SF", "SX01", "F", 14))
    _set(db, rt, "callback.periodic.quarterly_ratio", "0.1")
    frame = _frame(db, Q3.date())
    assert sum(map(len, frame.values())) == 72
    counts = _counts({k: len(v) for k, v in frame.items()}, 8, "test-seed")
    assert {k: n for k, n in counts.items() if n} == {("HZ01", "A+"): 2, ("NB01", "C"): 4, ("SX01", "F"): 2}

    outcome = _run(db, rt)
    assert outcome.quota == 8
    cases = _callbacks(db)
    with db.transaction() as s:
        by_stratum = Counter((c.branch_code, c.classification) for c in
                             (s.get(Client, cases[key].client_id) for key in outcome.started))
    assert by_stratum == Counter({("HZ01", "A+"): 2, ("NB01", "C"): 4, ("SX01", "F"): 2})
    # Which clients, too: the same rule from the seed recorded with the run.
    [record] = _batches(db)
    expected = _expected(frame, 8, record["seed"])
    assert _started_clients(db, outcome) == set().union(*expected.values())
    strata = {(r["branch"], r["class"]): r for r in record["strata"]}
    assert len(strata) == 10
    assert {k: r["allocated"] for k, r in strata.items() if r["allocated"]} == dict(by_stratum)
    assert (strata[("NB01", "C")]["active"], strata[("NB01", "C")]["eligible"]) == (30, 30)


def test_the_same_seed_over_the_same_registry_selects_the_same_clients(db, rt, december_demo):
    _add_clients(db, rt, *_many("HA", "HZ01", "A+", 19), *_many("NC", "NB01", "C", 29))
    _set(db, rt, "callback.periodic.quarterly_ratio", "0.1")

    class Discard(Exception):
        pass

    with pytest.raises(Discard), time_machine.travel(Q3, tick=False), db.transaction() as s:
        first = periodic_callbacks.run(s, rt, at=Q3, seed="replayed")
        raise Discard  # roll the first run back, as if it had never committed
    second = _run(db, rt, seed="replayed")
    assert len(first.selected) == 6  # ceil(10 % of 58)
    assert second.selected == first.selected and second.started == first.started


# -- over-sampling ----------------------------------------------------------------------------
def test_sample_draws_each_client_in_proportion_to_its_weight():
    stratum = [Candidate("V", "SX01", "B+", oversampled=True), Candidate("O", "SX01", "B+", oversampled=True),
               *(Candidate(f"N{i}", "SX01", "B+", oversampled=False) for i in range(4))]
    runs = 4000
    for factor, heavy, light in ((Decimal(2), 2 / 8, 1 / 8), (Decimal(1), 1 / 6, 1 / 6), (Decimal(3), 3 / 10, 1 / 10)):
        first = Counter(periodic_callbacks.sample(stratum, 1, f"seed-{i}", factor)[0].client_id for i in range(runs))
        # A single draw picks a client with probability weight ÷ total weight.
        for client_id in ("V", "O"):
            assert first[client_id] / runs == pytest.approx(heavy, abs=0.03)
        for i in range(4):
            assert first[f"N{i}"] / runs == pytest.approx(light, abs=0.03)


def test_vip_and_elderly_clients_are_over_sampled_within_their_stratum(db, rt, december_demo):
    # A new stratum, SX01 B+: a silver VIP, a client turning 65 on the run date (elderly), one
    # turning 65 the day after (not yet), and seven others.
    _add_clients(db, rt, {"id": "BV", "branch": "SX01", "cls": "B+", "tier": "silver"},
                 {"id": "BO", "branch": "SX01", "cls": "B+", "born": date(1960, 7, 1)},
                 {"id": "BY", "branch": "SX01", "cls": "B+", "born": date(1960, 7, 2)},
                 *_many("BN", "SX01", "B+", 7))
    _set(db, rt, "callback.periodic.quarterly_ratio", "0.4")  # 20 clients: 8, of which 4 in SX01 B+
    stratum = ("SX01", "B+")
    weighted = _frame(db, Q3.date())
    assert {c for c, w in weighted[stratum].items() if w == 2.0} == {"BV", "BO"}
    flat = _frame(db, Q3.date(), factor=1.0)
    # A seed under which the weights change who is called in the stratum, so the run shows them.
    seed = next(f"seed-{i}" for i in range(1000)
                if _expected(weighted, 8, f"seed-{i}")[stratum] != _expected(flat, 8, f"seed-{i}")[stratum])

    outcome = _run(db, rt, seed=seed)
    assert outcome.quota == 8
    expected = _expected(weighted, 8, seed)
    assert len(expected[stratum]) == 4
    assert _started_clients(db, outcome) == set().union(*expected.values())
    report = next(r for r in _batches(db)[0]["strata"] if (r["branch"], r["class"]) == stratum)
    assert (report["eligible"], report["oversampled_eligible"]) == (10, 2)
    assert report["oversampled_selected"] == len(expected[stratum] & {"BV", "BO"})


def test_the_oversample_factor_is_a_setting(db, rt, december_demo):
    _add_clients(db, rt, {"id": "BV", "branch": "SX01", "cls": "B+", "tier": "gold"}, *_many("BN", "SX01", "B+", 9))
    _set(db, rt, "callback.periodic.quarterly_ratio", "0.25")
    _set(db, rt, "callback.periodic.oversample_factor", "5")
    five, two = _frame(db, Q3.date(), factor=5.0), _frame(db, Q3.date())
    # A seed under which a factor of 5 calls other clients than the default 2 would.
    seed = next(f"seed-{i}" for i in range(1000) if _expected(five, 5, f"seed-{i}") != _expected(two, 5, f"seed-{i}"))
    outcome = _run(db, rt, seed=seed)
    assert outcome.settings["callback.periodic.oversample_factor"] == "5"
    assert _started_clients(db, outcome) == set().union(*_expected(five, 5, seed).values())


# -- exclusions -------------------------------------------------------------------------------
def _callback(db, rt, client_id: str, at: datetime) -> int:
    with time_machine.travel(at, tick=False), db.transaction() as s:
        return instances.start(s, rt, process_key="callback", business_key=None, actor=Actor.system("crm"),
                               client_id=client_id,
                               data={"callback_type": "anomaly", "client_id": client_id, "qa_sample_rate": 0}).id


def _refuse(db, rt, instance_id: int, at: datetime) -> None:
    """The client refuses on the first call: the callback ends (K-E3), QA not sampled."""
    with time_machine.travel(at, tick=False), db.transaction() as s:
        agent = identity.actor_for(s, identity.get_user(s, AGENT))
        task = s.execute(select(Task).where(Task.instance_id == instance_id, Task.element_id == "call_attempt",
                                            Task.status == "open")).scalar_one()
        tasks.complete(s, rt, task_id=task.id, actor=agent, data=REFUSED)
        assert s.get(ProcessInstance, instance_id).status == "completed"


def test_clients_with_a_callback_open_or_completed_in_the_last_six_months_are_not_selected(db, rt, december_demo):
    # The run is 2025-07-01 10:00: the window opens 2025-01-01 10:00.
    _refuse(db, rt, _callback(db, rt, "C01", sh(2024, 12, 20, 10)), sh(2024, 12, 20, 11))  # completed before it
    _refuse(db, rt, _callback(db, rt, "C02", sh(2024, 12, 30, 10)), sh(2025, 1, 2, 11))  # completed inside it
    _callback(db, rt, "C03", sh(2024, 12, 20, 10))  # opened before the window, still open
    with db.transaction() as s:
        instances.cancel(s, rt, instance_id=_callback(db, rt, "C04", sh(2025, 3, 3, 10)), actor=ADMIN)
    _set(db, rt, "callback.periodic.quarterly_ratio", "1")  # select everyone who may be selected

    outcome = _run(db, rt)
    assert outcome.excluded["recently_called"] == 2
    # C01 was called more than 6 months ago and C04's callback was cancelled (no call made).
    assert _started_clients(db, outcome) == {f"C{i:02d}" for i in range(1, 11)} - {"C02", "C03"}
    assert (outcome.base, outcome.quota, outcome.eligible) == (10, 10, 8)
    assert _batches(db)[0]["excluded"] == {"dormant": 0, "suspended": 0, "recently_called": 2}


def test_the_recent_callback_window_is_a_setting(db, rt, december_demo):
    _refuse(db, rt, _callback(db, rt, "C01", sh(2024, 12, 20, 10)), sh(2024, 12, 20, 11))
    _set(db, rt, "callback.periodic.quarterly_ratio", "1")
    _set(db, rt, "callback.periodic.recent_months", "12")
    outcome = _run(db, rt)
    assert "C01" not in _started_clients(db, outcome) and outcome.excluded["recently_called"] == 1


def test_dormant_and_suspended_accounts_are_outside_the_base_and_the_sample(db, rt, december_demo):
    with db.transaction() as s:
        registry.update_client(s, values={"client_id": "C01", "account_status": "dormant"}, actor=ADMIN, now=rt.now())
        registry.update_client(s, values={"client_id": "C02", "account_status": "suspended"}, actor=ADMIN,
                               now=rt.now())
        # The status also arrives with the client file; an empty cell is an active account.
        report = registry_import.import_csv(s, kind="clients", actor=ADMIN, now=rt.now(), data=(
            "client_id,name,branch,account_status\nXS,XS,SX01,suspended\nXA,XA,HZ01,\nXB,XB,HZ01,frozen\n"))
    assert (report.created, [(e.line, e.column) for e in report.rejected]) == (2, [(4, "account_status")])
    with db.transaction() as s:
        assert s.get(Client, "XA").account_status == "active"
    _set(db, rt, "callback.periodic.quarterly_ratio", "1")

    outcome = _run(db, rt)
    # 12 clients: C01 dormant, C02 and XS suspended; the other 9 are the base, and at 100 %
    # every one of them is selected.
    assert (outcome.base, outcome.quota, outcome.active) == (9, 9, 9)
    assert outcome.excluded == {"dormant": 1, "suspended": 2, "recently_called": 0}
    assert _started_clients(db, outcome) == {"C03", "C04", "C05", "C06", "C07", "C08", "C09", "C10", "XA"}


# -- nothing to select --------------------------------------------------------------------------
def test_a_batch_with_everyone_recently_called_records_that_and_starts_nothing(db, rt, december_demo):
    _set(db, rt, "callback.periodic.quarterly_ratio", "1")
    _run(db, rt)  # every client now has an open callback
    before = set(_callbacks(db))
    outcome = _run(db, rt, at=Q3 + timedelta(hours=1), seed="again")
    assert (outcome.quota, outcome.eligible, outcome.selected, outcome.started) == (10, 0, [], [])
    assert outcome.nothing_to_select == "every active client had a callback open or completed in the last 6 months"
    assert set(_callbacks(db)) == before
    record = _batches(db)[-1]
    assert (record["nothing_to_select"], record["started"], record["shortfall"]) == (
        outcome.nothing_to_select, [], 10)


def test_a_batch_with_no_active_client_records_a_zero_quota_and_starts_nothing(db, rt, december_demo):
    with db.transaction() as s:
        for client_id in s.execute(select(Client.client_id)).scalars().all():
            registry.update_client(s, values={"client_id": client_id, "account_status": "dormant"}, actor=ADMIN,
                                   now=rt.now())
    outcome = _run(db, rt)
    assert (outcome.base, outcome.quota, outcome.started) == (0, 0, [])
    assert outcome.nothing_to_select == "the quota is 0: the base counts no active clients"
    assert _callbacks(db) == {}
    [record] = _batches(db)
    assert (record["quota"], record["excluded"]["dormant"], record["strata"]) == (0, 10, [])


# -- the cases ----------------------------------------------------------------------------------
def test_the_started_cases_are_periodic_callbacks_due_20_working_days_later(db, rt, december_demo):
    _set(db, rt, "callback.periodic.quarterly_ratio", "0.3")
    outcome = _run(db, rt, at=Q4)
    assert outcome.started == ["CB-20251009-0001", "CB-20251009-0002", "CB-20251009-0003"]
    # 20 working days from Thursday 10-09 10:00: 10-10, the 调休 make-up Saturday 10-11, then
    # 10-13 … 11-04 is 19, and Wednesday 11-05 is the 20th.
    due = sh(2025, 11, 5, 10)
    cases = _callbacks(db)
    with db.transaction() as s:
        assert calendar_store.CALENDARS.get(s, "default").add(Q4, 20, Unit.WORKING_DAYS).at == due
        for key in outcome.started:
            case = cases[key]
            data = instances.data_of(s, rt, case)
            assert (data["callback_type"], data["periodic_batch"], case.started_by) == (
                "periodic", "2025Q4", "periodic-callbacks")
            attempt = s.execute(select(Task).where(Task.instance_id == case.id, Task.element_id == "call_attempt")
                                ).scalar_one()
            assert (attempt.status, attempt.candidate_groups, attempt.due_at) == ("open", ["call_center_agent"], due)
            assert s.get(SlaPolicy, attempt.sla_policy_id).key == "callback.periodic.task"
            assert case.branch_code == s.get(Client, case.client_id).branch_code


def test_without_the_callback_process_the_batch_refuses_to_run(db, rt):
    with time_machine.travel(sh(2024, 12, 2, 12), tick=False), db.transaction() as s:
        demo.load(s, rt)  # no workflows deployed
    with pytest.raises(ProcessNotFound, match="no process 'callback'"):
        _run(db, rt)
    assert _batches(db) == []


# -- the schedule -------------------------------------------------------------------------------
def test_the_schedule_slot_runs_once_even_if_delivered_twice(db, rt, snapshot):
    # Loaded on Friday 2025-06-20: the demo's batch waits for Tuesday 07-01 at 10:00, an hour
    # after the monthly VIP evaluation of the same morning.
    load_demo(db, rt, snapshot, at=sh(2025, 6, 20, 12))
    slot = sh(2025, 7, 1, 10)
    with db.transaction() as s:
        schedule = next(x for x in schedules.get_all(s) if x.key == demo.PERIODIC_SCHEDULE_KEY)
        assert (schedule.process_key, schedule.rule, schedule.next_run_at) == (
            "job:callback.periodic_batch", "first_working_day_of_quarter", slot)
    with time_machine.travel(slot + timedelta(seconds=1), tick=False):
        assert firing.fire_due(db, rt) == 2  # the VIP evaluation (09:00) and the batch
        assert firing.fire_due(db, rt) == 0
    [record] = _batches(db)
    assert record["quota"] == 1 and len(record["started"]) == 1  # ceil(2.5 % of 10)
    with db.transaction() as s:
        runs = s.execute(select(AuditEvent).where(AuditEvent.kind == "schedule.job_run")).scalars().all()
        run = next(r for r in runs if r.data["job"] == periodic_callbacks.JOB_NAME)
        assert run.data["slot"] == "callback-periodic-20250701"
        assert (run.data["result"]["seed"], run.data["result"]["started"]) == (record["seed"], 1)
        schedule = next(x for x in schedules.get_all(s) if x.key == demo.PERIODIC_SCHEDULE_KEY)
        assert schedule.next_run_at == Q4
    # The selection follows from the recorded seed (nobody had a callback before the run).
    [picked] = [c for c in _expected(_frame(db, slot.date()), 1, record["seed"]).values() if c]
    assert {_callbacks(db)[record["started"][0]].client_id} == picked

    # The same slot delivered again (a job retried after a crash) selects and starts nothing.
    with time_machine.travel(slot + timedelta(minutes=5), tick=False), db.transaction() as s:
        schedule = next(x for x in schedules.get_all(s) if x.key == demo.PERIODIC_SCHEDULE_KEY)
        schedules._run_job(s, rt, schedule, "callback-periodic-20250701", slot, rt.now())
    assert len(_batches(db)) == 1
    assert list(_callbacks(db)) == record["started"]
    with db.transaction() as s:
        slots = s.execute(select(AuditEvent.data["slot"].as_string()).where(AuditEvent.kind == "schedule.job_run")
                          ).scalars().all()
    assert slots.count("callback-periodic-20250701") == 1


# -- settings -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("key", "value"), [
    ("callback.periodic.quarterly_ratio", "0"), ("callback.periodic.quarterly_ratio", "1.5"),
    ("callback.periodic.quarterly_ratio", "lots"), ("callback.periodic.oversample_factor", "0.5"),
    ("callback.periodic.elderly_age", "sixty"), ("callback.periodic.recent_months", "-1"),
    ("callback.periodic.unknown", "1"),
])
def test_a_bad_setting_is_refused(db, rt, key, value):
    with pytest.raises(InvalidInput), db.transaction() as s:
        settings.set_value(s, key=key, value=value, actor=ADMIN, now=rt.now())


def test_settings_are_for_process_owners_and_audited(db, rt):
    clerk = Actor(username="li", groups=frozenset({"clerks"}))
    with pytest.raises(PermissionDenied), db.transaction() as s:
        settings.set_value(s, key="callback.periodic.elderly_age", value="70", actor=clerk, now=rt.now())
    _set(db, rt, "callback.periodic.elderly_age", "70")
    with db.transaction() as s:
        assert periodic_callbacks.load_config(s).elderly_age == 70
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == settings.AUDIT_KIND)).scalar_one()
        assert event.data == {"key": "callback.periodic.elderly_age", "before": None, "after": "70"}


def test_the_batch_settings_are_set_from_the_cli_like_the_figures(db, database_url):
    from tests.support.cli import bpm

    assert bpm(database_url, "figures", "set", "callback.periodic.quarterly_ratio", "0.03").exit_code == 0
    with db.transaction() as s:
        assert periodic_callbacks.load_config(s).as_settings()["callback.periodic.quarterly_ratio"] == "0.03"
    refused = bpm(database_url, "figures", "set", "callback.periodic.oversample_factor", "1000")
    assert refused.exit_code == 1 and isinstance(refused.exception, InvalidInput)
