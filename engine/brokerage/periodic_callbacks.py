"""The quarterly periodic callback batch (存量定期回访, docs/domain.md#periodic-sampling).

Run by the schedule ``callback-periodic`` (job ``callback.periodic_batch``, first working
day of each quarter) or by :func:`run`. One batch:

1. **Base**: the clients whose account is active, i.e. not dormant (休眠) or suspended
   (中止交易), which the regulatory 10 %-a-year rule leaves out. The prior year-end count
   given for the figures, ``callback.periodic.active_clients.<year>``, replaces the
   registry's count when it is set: the registry holds today's statuses, not the
   year-end's, and the batch's quota should be the one the coverage figure
   (``engine.figures.periodic_callbacks``) is measured against.
2. **Quota** = ceil(``callback.periodic.quarterly_ratio`` × base).
3. **Frame**: the active clients without a callback (any type) open now or completed in
   the last ``callback.periodic.recent_months`` calendar months.
4. **Strata**: branch × client class. Each stratum's share of the quota is proportional
   to its share of the frame (so no stratum is allotted more clients than it has), rounded
   by largest remainder; equal remainders are ordered by the seeded draw, not by name, so
   no branch is favoured quarter after quarter.
5. **Within a stratum**: weighted sampling without replacement (Efraimidis–Spirakis: the
   ``n`` largest ``ln(u) / w``), where ``w`` is ``callback.periodic.oversample_factor`` for a
   VIP (any tier) or elderly client (``callback.periodic.elderly_age`` or older on the
   run date) and 1 otherwise.
6. One ``callback`` case (``callback_type`` periodic) per selected client, started like
   every other callback; its call is due in 20 WD by the SLA policy
   ``callback.periodic.task``.

Every draw ``u`` is a hash of the seed and the client id (or stratum), so the selection is
a function of the seed and the registry: the seed is recorded with the run, and the same
seed over the same data selects the same clients. Each run is recorded in the system
audit stream (``callback.periodic_batch``): seed, settings, base, quota, strata, exclusions,
selection and the case numbers started.
"""

from __future__ import annotations

import calendar
import hashlib
import math
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.audit import record_system_event
from engine.brokerage import figures, settings
from engine.calendars import SHANGHAI
from engine.errors import BpmError
from engine.models import Client, Group, GroupMember, InstanceStatus, Notification, ProcessInstance, User
from engine.process import instances
from engine.process.deployments import get_latest
from engine.process.runtime import Runtime
from engine.sla.milestones import languages

JOB_NAME = "callback.periodic_batch"
CALLBACK_PROCESS = "callback"
CALLBACK_TYPE = "periodic"
BATCH_ACTOR = Actor.system("periodic-callbacks")
AUDIT_KIND = "callback.periodic_batch"
ACTIVE = "active"
UNCLASSIFIED = "unclassified"  # the class stratum of a client the evaluation has not classified

# The batch's stored tunables (engine.brokerage.settings: key, default, meaning).
CONFIG_KEYS = ("callback.periodic.quarterly_ratio", "callback.periodic.oversample_factor",
               "callback.periodic.elderly_age", "callback.periodic.recent_months")


@dataclass(frozen=True)
class BatchConfig:
    quarterly_ratio: Decimal
    oversample_factor: Decimal
    elderly_age: int
    recent_months: int

    def as_settings(self) -> dict[str, str]:
        """By configuration key, as recorded with a run."""
        return {f"callback.periodic.{name}": str(value) for name, value in asdict(self).items()}


def load_config(session: Session) -> BatchConfig:
    """The defaults, overridden by bpm_setting rows of the same key."""
    return BatchConfig(**{key.removeprefix("callback.periodic."): value
                          for key, value in settings.load(session, CONFIG_KEYS).items()})


# -- the draw (pure: no database) ------------------------------------------------------------
Stratum = tuple[str, str]  # (branch code, client class)


@dataclass(frozen=True)
class Candidate:
    client_id: str
    branch: str
    client_class: str
    oversampled: bool  # VIP (any tier) or elderly on the run date


def draw(seed: str, name: str) -> float:
    """A number in (0, 1) fixed by the seed and the name: SHA-256 of ``seed:name``, first 8
    bytes big-endian, centred in its 2⁻⁶⁴ slot so it is never 0 or 1."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / 2**64


def allocate(sizes: Mapping[Stratum, int], quota: int, seed: str) -> dict[Stratum, int]:
    """Largest-remainder shares of ``min(quota, total)`` proportional to ``sizes``; equal
    remainders go first to the stratum with the larger ``draw(seed, "stratum:<branch>:<class>")``."""
    total = sum(sizes.values())
    quota = min(quota, total)
    if quota <= 0:
        return {stratum: 0 for stratum in sizes}
    exact = {stratum: Fraction(quota * size, total) for stratum, size in sizes.items()}
    shares = {stratum: math.floor(value) for stratum, value in exact.items()}
    left = quota - sum(shares.values())
    order = sorted(sizes, key=lambda s: (-(exact[s] - shares[s]), -draw(seed, f"stratum:{s[0]}:{s[1]}")))
    for stratum in order[:left]:
        shares[stratum] += 1
    return shares


def sample(candidates: Sequence[Candidate], n: int, seed: str, factor: Decimal) -> list[Candidate]:
    """``n`` of ``candidates`` without replacement, each drawn with weight ``factor`` if
    over-sampled, else 1: the ``n`` largest ``ln(draw(seed, client_id)) / weight``."""
    weight = float(factor)

    def key(c: Candidate) -> tuple[float, str]:
        return (-math.log(draw(seed, c.client_id)) / (weight if c.oversampled else 1.0), c.client_id)

    return sorted(candidates, key=key)[:max(n, 0)]


# -- one batch -------------------------------------------------------------------------------
@dataclass
class StratumReport:
    branch: str
    client_class: str
    active: int = 0
    recently_called: int = 0
    eligible: int = 0
    allocated: int = 0
    oversampled_eligible: int = 0
    oversampled_selected: int = 0


@dataclass
class Outcome:
    as_of: date
    quarter: str
    seed: str
    settings: dict[str, str]
    base: int = 0  # prior year-end active clients: the quota's denominator
    base_source: str = "registry"
    quota: int = 0
    active: int = 0
    excluded: dict[str, int] = field(default_factory=lambda: {"dormant": 0, "suspended": 0, "recently_called": 0})
    eligible: int = 0
    strata: list[StratumReport] = field(default_factory=list)
    selected: list[str] = field(default_factory=list)  # client ids, in the order their cases started
    started: list[str] = field(default_factory=list)  # business keys of the callbacks started
    problems: list[str] = field(default_factory=list)
    nothing_to_select: str | None = None  # why no client was selected, if none was

    @property
    def shortfall(self) -> int:
        return max(self.quota - len(self.selected), 0)

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        data["as_of"] = self.as_of.isoformat()
        data["shortfall"] = self.shortfall
        for stratum in data["strata"]:
            stratum["class"] = stratum.pop("client_class")
        return data


def quarter_of(day: date) -> str:
    return f"{day.year}Q{(day.month - 1) // 3 + 1}"


def age_on(birth: date, day: date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def months_before(moment: datetime, months: int) -> datetime:
    """The same local (Shanghai) date and time ``months`` calendar months earlier, clamped to
    the month's last day (Aug 31 − 6 months = Feb 28/29), as the CM unit counts forward."""
    local = moment.astimezone(SHANGHAI)
    year, month0 = divmod(local.year * 12 + local.month - 1 - months, 12)
    day = min(local.day, calendar.monthrange(year, month0 + 1)[1])
    return local.replace(year=year, month=month0 + 1, day=day)


def _recently_called(session: Session, since: datetime) -> set[str]:
    """Clients with a callback open now (running, or failed and awaiting a retry) or
    completed since ``since``. A cancelled callback never reached anyone."""
    rows = session.execute(
        select(ProcessInstance.client_id).distinct()
        .where(ProcessInstance.process_key == CALLBACK_PROCESS, ProcessInstance.client_id.is_not(None),
               or_(ProcessInstance.status.in_((InstanceStatus.RUNNING, InstanceStatus.FAILED)),
                   and_(ProcessInstance.status == InstanceStatus.COMPLETED, ProcessInstance.ended_at >= since)))
    ).scalars()
    return {client_id for client_id in rows if client_id}


def run(session: Session, rt: Runtime, *, at: datetime, seed: str) -> Outcome:
    """Select this quarter's clients and start their callbacks (see the module docstring).
    ``at`` is the run's moment (the schedule's slot): it fixes the run date, the quarter,
    ages and the recent-callback window. Refuses to run, before selecting anything, when the
    callback process is not deployed: a timer then retries the slot instead of recording a
    quarter whose cases could not start."""
    get_latest(session, CALLBACK_PROCESS)
    config = load_config(session)
    as_of = at.astimezone(SHANGHAI).date()
    outcome = Outcome(as_of=as_of, quarter=quarter_of(as_of), seed=seed, settings=config.as_settings())

    recent = _recently_called(session, months_before(at, config.recent_months))
    strata: dict[Stratum, StratumReport] = {}
    frame: dict[Stratum, list[Candidate]] = {}
    clients = session.execute(
        select(Client.client_id, Client.branch_code, Client.classification, Client.vip_tier, Client.birth_date,
               Client.account_status).order_by(Client.client_id)).all()
    for client_id, branch, client_class, tier, birth, status in clients:
        if status != ACTIVE:
            outcome.excluded[status] = outcome.excluded.get(status, 0) + 1
            continue
        stratum = (branch, client_class or UNCLASSIFIED)
        report = strata.setdefault(stratum, StratumReport(branch=stratum[0], client_class=stratum[1]))
        report.active += 1
        if client_id in recent:
            report.recently_called += 1
            continue
        elderly = birth is not None and age_on(birth, as_of) >= config.elderly_age
        candidate = Candidate(client_id, branch, stratum[1], oversampled=tier is not None or elderly)
        frame.setdefault(stratum, []).append(candidate)
        report.eligible += 1
        report.oversampled_eligible += candidate.oversampled
    outcome.strata = [strata[s] for s in sorted(strata)]
    outcome.active = sum(r.active for r in outcome.strata)
    outcome.excluded["recently_called"] = sum(r.recently_called for r in outcome.strata)
    outcome.eligible = sum(r.eligible for r in outcome.strata)

    given = figures.active_clients(session, year=as_of.year - 1, branch=None)
    if given is not None:
        outcome.base, outcome.base_source = given, f"{settings.ACTIVE_CLIENTS}.{as_of.year - 1}"
    else:
        outcome.base = outcome.active
    outcome.quota = math.ceil(config.quarterly_ratio * outcome.base)

    shares = allocate({s: len(c) for s, c in frame.items()}, outcome.quota, seed)
    chosen: list[Candidate] = []
    for stratum in sorted(frame):
        picked = sample(frame[stratum], shares[stratum], seed, config.oversample_factor)
        strata[stratum].allocated = len(picked)
        strata[stratum].oversampled_selected = sum(c.oversampled for c in picked)
        chosen.extend(sorted(picked, key=lambda c: c.client_id))
    if not chosen:
        outcome.nothing_to_select = (
            "the quota is 0: the base counts no active clients" if outcome.quota == 0
            else "no active client in the registry" if outcome.active == 0
            else f"every active client had a callback open or completed in the last {config.recent_months} months")
    _start(session, rt, outcome, chosen)
    record_system_event(session, kind=AUDIT_KIND, actor=BATCH_ACTOR.username, at=rt.now(), data=outcome.record())
    return outcome


def _start(session: Session, rt: Runtime, outcome: Outcome, chosen: Iterable[Candidate]) -> None:
    """One callback per client, each in a savepoint: one case failing to start is reported
    and leaves the others started."""
    for candidate in chosen:
        outcome.selected.append(candidate.client_id)
        try:
            with session.begin_nested():
                case = instances.start(session, rt, process_key=CALLBACK_PROCESS, business_key=None,
                                       actor=BATCH_ACTOR, client_id=candidate.client_id,
                                       data={"callback_type": CALLBACK_TYPE, "client_id": candidate.client_id,
                                             "periodic_batch": outcome.quarter})
            outcome.started.append(case.business_key)
        except BpmError as exc:
            outcome.problems.append(f"{candidate.client_id}: {exc}")


def job(session: Session, rt: Runtime, *, slot: datetime) -> dict[str, Any]:
    """The schedule's entry point. The seed is drawn afresh for each slot, not derived from
    the date: callbacks look for staff misconduct (代客操作, 全权委托), and a sample anyone
    could compute in advance would let a branch prepare the clients about to be called. It
    is recorded with the run, which is what makes the draw reproducible."""
    outcome = run(session, rt, at=slot, seed=secrets.token_hex(16))
    return {"as_of": outcome.as_of.isoformat(), "quarter": outcome.quarter, "seed": outcome.seed,
            "quota": outcome.quota, "selected": len(outcome.selected), "started": len(outcome.started),
            "problems": outcome.problems}


# -- the quarter-end coverage check ---------------------------------------------------------
COVERAGE_JOB = "callback.periodic_coverage"
COVERAGE_AUDIT_KIND = "callback.periodic_coverage"


@dataclass(frozen=True)
class CoverageCheck:
    year: int
    quarter: int  # the quarter that ended
    active_clients: int  # the prior year-end base
    ytd_quota: int  # min_ratio x base x quarters elapsed / 4, rounded up
    clients_called: int
    coverage: float | None
    threshold: Decimal
    escalated_to: list[str]


def check_coverage(session: Session, *, at: datetime) -> CoverageCheck:
    """Brief §2.3 escalation: at the end of each quarter, the periodic callbacks completed
    this year (distinct clients, step K5, as the figure counts them) against the year-to-date
    quota; below ``callback.periodic.escalation_ratio`` (80 %) of it, every active member of
    ``callback.periodic.escalate_to`` (the call centre's supervisor and the process owner) is
    notified. ``at`` is the run (the first working day of the next quarter): the quarter checked
    is the one that ended before it. The base is the prior year-end active clients given for
    the figures, else the registry's active clients now (as the batch does). Recorded in the
    system audit stream whether or not it escalates."""
    as_of = at.astimezone(SHANGHAI).date()
    quarter_start = date(as_of.year, (as_of.month - 1) // 3 * 3 + 1, 1)
    last_day = quarter_start - timedelta(days=1)
    year, quarter = last_day.year, (last_day.month - 1) // 3 + 1
    config = figures.load_config(session)
    stored = settings.load(session, ["callback.periodic.escalation_ratio", "callback.periodic.escalate_to"])
    threshold, groups = stored["callback.periodic.escalation_ratio"], list(stored["callback.periodic.escalate_to"])
    start, end = (datetime.combine(d, time(0), SHANGHAI) for d in (date(year, 1, 1), quarter_start))
    found = figures.periodic_callbacks(session, scope=figures.Scope(start=start, end=end), config=config)
    base = found.active_clients
    if base is None:
        base = len(session.execute(select(Client.client_id).where(Client.account_status == ACTIVE)).all())
    ytd_quota = math.ceil(config.periodic_min_ratio * base * quarter / 4)
    coverage = found.clients_called / ytd_quota if ytd_quota else None
    told: list[str] = []
    if coverage is not None and Decimal(str(coverage)) < threshold:
        recipients = list(session.execute(
            select(User.username).join(GroupMember, GroupMember.user_id == User.id)
            .join(Group, Group.id == GroupMember.group_id)
            .where(Group.key.in_(groups), User.active.is_(True)).distinct().order_by(User.username)).scalars())
        for username, language in languages(session, recipients).items():
            subject, body = _COVERAGE_TEXTS[language]
            values = {"year": year, "quarter": quarter, "called": found.clients_called, "quota": ytd_quota,
                      "pct": round(coverage * 100), "threshold": round(threshold * 100)}
            session.add(Notification(channel="default", recipient=username, subject=subject.format(**values),
                                     body=body.format(**values), instance_id=None, task_id=None,
                                     created_at=at, attempts=0))
            told.append(username)
    result = CoverageCheck(year=year, quarter=quarter, active_clients=base, ytd_quota=ytd_quota,
                           clients_called=found.clients_called, coverage=coverage, threshold=threshold,
                           escalated_to=told)
    record_system_event(session, kind=COVERAGE_AUDIT_KIND, actor=BATCH_ACTOR.username, at=at,
                        data={**asdict(result), "threshold": str(threshold)})
    return result


_COVERAGE_TEXTS = {
    "zh": ("[存量回访] {year} 年第 {quarter} 季度末回访覆盖率 {pct}%，低于 {threshold}%",
           "截至 {year} 年第 {quarter} 季度末，存量定期回访已完成 {called} 位客户，年度累计应完成 {quota} 位"
           "（覆盖率 {pct}%，低于 {threshold}% 的升级线）。请安排补充回访。"),
    "en": ("[periodic callbacks] coverage at the end of Q{quarter} {year} is {pct}%, below {threshold}%",
           "By the end of Q{quarter} {year}, periodic callbacks reached {called} client(s) against a year-to-date "
           "quota of {quota} ({pct}%, below the {threshold}% escalation line). Please schedule more callbacks."),
}


def coverage_job(session: Session, rt: Runtime, *, slot: datetime) -> dict[str, Any]:
    """The schedule's entry point (first working day of each quarter, before the batch)."""
    found = check_coverage(session, at=slot)
    return {"year": found.year, "quarter": found.quarter, "coverage": found.coverage,
            "escalated_to": found.escalated_to}
