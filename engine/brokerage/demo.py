"""Demo data for ``make run``: three branches, their staff, service groups and ten clients,
shipped as the CSV files in ``demo_data/`` and loaded through the same importer an
administrator uses (so the demo doubles as a check of the importer), then classified as
of the demo's "today"; and the schedules of the monthly VIP tier evaluation (VIP step
V0a, docs/domain.md#vip) and of the quarterly periodic callback batch
(docs/domain.md#periodic-sampling), so the running demo evaluates tiers on the first
working day of each month and samples clients for callbacks on the first working day of
each quarter.

Every demo user's password is ``demo``. Loading is idempotent.
"""

from __future__ import annotations

import csv
import json
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.access import identity
from engine.access.roles import JOB_ROLES, SYSTEM_ROLES
from engine.bpmn import bundle
from engine.brokerage import classification, periodic_callbacks, registry_import, vip_evaluation
from engine.calendars import Unit
from engine.errors import InvalidInput
from engine.models import SlaPolicy, User
from engine.process import deployments
from engine.process.runtime import Runtime
from engine.sla import admin as sla_admin
from engine.timers import schedules

DEMO_DATA = Path(__file__).parent / "demo_data"
FILES = {kind: DEMO_DATA / f"{kind}.csv" for kind in registry_import.KINDS}
# The demo scenario's "today" (a Monday, as in engine.brokerage.demo_cases); the demo clients
# are classified then.
DEMO_TODAY = date(2025, 6, 16)
with FILES["staff"].open(encoding="utf-8", newline="") as _f:
    STAFF: list[dict[str, str]] = list(csv.DictReader(_f))
# System roles (not job roles, so not in the staff file) the demo gives some people.
EXTRA_ROLES: dict[str, list[str]] = {
    "s001": ["process_owner"], "s002": ["process_owner", "supervisor"], "s006": ["supervisor"],
    "s007": ["process_owner", "supervisor"], "s008": ["supervisor"], "s101": ["supervisor"],
    "s102": ["process_owner"], "s201": ["supervisor"], "s301": ["supervisor"],
}
JOB_ROLES = JOB_ROLES
PASSWORD = "demo"
# VIP step V0a: the monthly tier evaluation runs on the first working day of each month. The
# key is the one engine.vip_evaluation documents: an operator creating it by hand gets a
# conflict instead of a second schedule evaluating (and starting VIP cases) twice a month.
VIP_SCHEDULE_KEY = "vip-monthly"
# Periodic callbacks run in quarterly batches on the first working day of each quarter
# (docs/domain.md#periodic-sampling). 10:00, an hour after the VIP evaluation that runs on
# the same day (a quarter's first working day is also its month's): the sample is stratified
# by the classes that evaluation just set (and the effective tiers).
PERIODIC_SCHEDULE_KEY = "callback-periodic"
PERIODIC_SCHEDULE_AT = "10:00"


def load(session: Session, rt: Runtime) -> int:
    """Create the demo groups, users, branches and clients that do not exist yet, classify
    the clients as of :data:`DEMO_TODAY`, and create the monthly evaluation's schedule
    (:data:`VIP_SCHEDULE_KEY`) and the periodic callback batch's
    (:data:`PERIODIC_SCHEDULE_KEY`) unless they exist; returns how many users were created."""
    actor = identity.Actor.system("demo")
    for key, name in SYSTEM_ROLES.items():
        identity.ensure_group(session, key=key, name=name)
    for key, name in JOB_ROLES.items():
        identity.ensure_group(session, key=key, name=name)
    existing = set(session.execute(select(User.username)).scalars())
    report = registry_import.import_files(
        session, files={kind: (path.name, path.read_bytes()) for kind, path in FILES.items()},
        actor=actor, now=rt.now())
    if report.rejected:
        problems = [e.format(f.source) for f in report.files for e in f.rejected]
        raise InvalidInput("the demo data was rejected: " + "; ".join(problems))
    created = [row["username"] for row in STAFF if row["username"] not in existing]
    # One hash for all, the administrator's too: the same published demo password, and a
    # password hash is deliberately slow (argon2id, about a tenth of a second).
    password_hash = identity.hash_password(PASSWORD) if created or "admin" not in existing else None
    for username in created:
        identity.get_user(session, username).password_hash = password_hash
    for username, roles in EXTRA_ROLES.items():
        for role in roles:
            identity.add_member(session, group_key=role, username=username)
    if "admin" not in existing:
        identity.create_user(session, username="admin", display_name="系统管理员", now=rt.now(),
                             groups=["admin"], actor="demo").password_hash = password_hash
        created.append("admin")
    classification.ensure_default(session, now=rt.now())
    classification.evaluate(session, as_of=DEMO_TODAY, actor=actor, now=rt.now())
    existing_schedules = {s.key for s in schedules.get_all(session)}
    if VIP_SCHEDULE_KEY not in existing_schedules:
        # The first run is the next first working day of a month at 09:00 (Shanghai); the job
        # evaluates whatever the registry holds then.
        schedules.create(session, rt, key=VIP_SCHEDULE_KEY, process_key=schedules.JOB_PREFIX + vip_evaluation.JOB_NAME,
                         rule="first_working_day_of_month", at_time="09:00", actor=actor)
    if PERIODIC_SCHEDULE_KEY not in existing_schedules:
        schedules.create(session, rt, key=PERIODIC_SCHEDULE_KEY,
                         process_key=schedules.JOB_PREFIX + periodic_callbacks.JOB_NAME,
                         rule="first_working_day_of_quarter", at_time=PERIODIC_SCHEDULE_AT, actor=actor)
    return len(created)


def load_workflows(session: Session, rt: Runtime, workflows: Path) -> tuple[list[deployments.DeployedVersion], int]:
    """Deploy the diagrams in ``workflows/`` and save the SLA policies in
    ``workflows/sla/*.json``; returns the versions and how many policies were saved (new
    or changed: saving a policy recomputes every open task's due date and milestone
    timers, so an unchanged one is left alone and a reload writes nothing)."""
    results = []
    actor = identity.Actor.system("demo")
    if any(workflows.glob("*.bpmn")):
        results = deployments.deploy(session, rt, bundle.from_paths([workflows]), actor=actor)
    saved = 0
    for path in sorted((workflows / "sla").glob("*.json")):
        for policy in json.loads(path.read_text(encoding="utf-8")):
            if not _policy_unchanged(session, policy):
                sla_admin.upsert_policy(session, rt, data=policy, actor=actor)
                saved += 1
    return results, saved


# How ``sla.upsert_policy`` stores each field of a policy file (key -> stored value).
_POLICY_FIELDS: dict[str, Any] = {
    "key": lambda d: d["key"],
    "name": lambda d: d.get("name", d["key"]),
    "position": lambda d: int(d.get("position", 100)),
    "active": lambda d: bool(d.get("active", True)),
    "process_key": lambda d: d.get("process_key"),
    "element_id": lambda d: d.get("element_id"),
    "lane": lambda d: d.get("lane"),
    "min_priority": lambda d: d.get("min_priority"),
    "match_data": lambda d: dict(d.get("match_data") or {}),
    "target_amount": lambda d: Decimal(str(d["target_amount"])),
    "target_unit": lambda d: Unit(d["target_unit"]).value,
    "business_hours": lambda d: d.get("business_hours", "default"),
    "milestones": lambda d: sorted(d.get("milestones", []), key=lambda m: m["at"]),
    "pausable": lambda d: bool(d.get("pausable", True)),
    "anchor_variable": lambda d: d.get("anchor_variable") or None,
}


def _policy_unchanged(session: Session, data: dict[str, Any]) -> bool:
    """Whether the stored policy already says what ``data`` says (as ``sla.upsert_policy``
    stores it). A field this does not know, or anything unreadable, counts as a change: the
    policy is then saved, through the checks of ``upsert_policy``."""
    if not isinstance(data, dict) or set(data) - set(_POLICY_FIELDS):
        return False
    policy = session.execute(select(SlaPolicy).where(SlaPolicy.key == data.get("key"))).scalar_one_or_none()
    if policy is None:
        return False
    try:
        return all(getattr(policy, name) == stored(data) for name, stored in _POLICY_FIELDS.items())
    except (KeyError, TypeError, ValueError, ArithmeticError):
        return False
