"""workflows/vip_onboarding.bpmn (贵宾客户准入 / 等级调整, brief §2.4) driven through the engine
services on the demo data: the end state, who got each task (candidate groups), due dates on
the working-day calendar from workflows/sla/vip_onboarding.json, the grace period's timers,
the audit trail, and the client's effective tier in the registry, which only the case's
activation, downgrade and closure steps change. Time moves with time-machine."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest
import time_machine
from lxml import etree
from sqlalchemy import select

from engine.access.identity import Actor
from engine.bpmn import bundle
from engine.brokerage import settings
from engine.brokerage.services.vip import evaluate, reevaluate
from engine.calendars import SHANGHAI
from engine.config import PROJECT_ROOT
from engine.errors import FormValidationError, PermissionDenied, TaskNotFound
from engine.models import Client, MessageSubscription, ProcessInstance, Task, Timer
from engine.process import deployments, instances, passage, tasks
from engine.timers import firing
from tests.support.cases import CaseDriver

# Process and diagram logic: the same on either store (SQLite runs the processes end to end
# in tests/api/test_process_end_to_end.py).
pytestmark = pytest.mark.store_independent

WORKFLOWS = PROJECT_ROOT / "workflows"
MONTHLY_RUN = Actor.system("vip-monthly")  # the monthly evaluation (V0a) starts the instances
GROUP_LANE, BRANCH_LANE, HQ_LANE = "服务小组 / 客户经理", "营业部负责人", "总部经纪业务管理总部"
END_STATES = {"end_activated", "end_downgraded", "end_no_change", "end_nurtured", "end_declined", "end_rejected",
              "end_closed", "end_recovered", "end_recovered_notice"}
ADVISORY = {"sms_stock_picks", "strategy_research"}  # gold's investment-advisory benefits
# Demo clients (brief §4.4); branch, group and suitability travel in the start data until a
# client registry provides them. Tiers and assets are set per scenario.
CLIENTS: dict[str, dict[str, Any]] = {
    "C02": {"client_id": "C02", "branch_code": "HZ01", "service_group": "HZ01-G1", "risk_level": "C3"},
    "C03": {"client_id": "C03", "branch_code": "NB01", "service_group": "NB01-G1", "risk_level": "C5"},
    "C04": {"client_id": "C04", "branch_code": "NB01", "service_group": "NB01-G1", "risk_level": "C4"},
    "C05": {"client_id": "C05", "branch_code": "SX01", "service_group": "SX01-G1", "risk_level": "C2"},
    "C06": {"client_id": "C06", "branch_code": "HZ01", "service_group": "HZ01-G2", "risk_level": "C4"},
    "C07": {"client_id": "C07", "branch_code": "SX01", "service_group": "SX01-G1", "risk_level": "C3"},
    "C08": {"client_id": "C08", "branch_code": "NB01", "service_group": "NB01-G2", "risk_level": "C3"},
    "C09": {"client_id": "C09", "branch_code": "SX01", "risk_level": "C2"},  # branch pool: no group
}
WELCOMED = {"client_contacted": True, "client_accepts_membership": "yes", "preferred_channels": ["app", "sms"],
            "marketing_consent": True, "risk_assessment_valid": True, "advisory_agreement_signed": True,
            "recording_id": "REC-VIP-1"}


def sh(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=SHANGHAI)


def evaluation(client: str, previous: str, assets: int, **changes: Any) -> dict[str, Any]:
    """A monthly evaluation result for May 2025, run on the 1st working day of June."""
    return {**CLIENTS[client], "investor_type": "ordinary", "risk_assessed_at": "2024-09-10",
            "previous_tier": previous, "avg_daily_assets_prev_month": assets, "evaluation_period": "2025-05",
            "evaluated_at": "2025-06-03T10:00:00+08:00", **changes}


@pytest.fixture
def staff(staff) -> dict[str, Actor]:
    """The demo people (engine.demo.STAFF), workflows/ and its SLA policies, plus s110 顾敏:
    HZ01's deputy branch head who still serves clients as an account manager in HZ01-G2
    (brief §1: group membership comes on top of the job role)."""
    people = dict(staff)
    # Service-group membership is the client registry's to write; the persona is enough here.
    people["s110"] = Actor(username="s110", branch_code="HZ01", groups=frozenset({
        "branch_head", "HZ01:branch_head", "account_manager", "HZ01:account_manager", "HZ01-G2"}))
    return people


class Case(CaseDriver):
    """One VIP case, driven the way the worklist would: the candidate inbox, then complete."""

    candidate_inbox = True

    def start(self, data: dict[str, Any], actor: Actor = MONTHLY_RUN) -> None:
        with self.db.transaction() as s:
            instance = instances.start(s, self.rt, process_key="vip_onboarding", business_key=self.key,
                                       actor=actor, data=data)
            assert instance.status != "failed", instance.error
            self.instance_id = instance.id

    def do(self, element: str, who: str, data: dict[str, Any], *, alone: bool = True) -> Task:
        """``element`` is the only open task, in ``who``'s candidate inbox; ``who`` completes it."""
        return super().do(element, who, data, alone=alone)

    def refused(self, task: Task, who: str, data: dict[str, Any]) -> None:
        """``who`` can neither claim nor complete ``task``; it stays open and unclaimed."""
        actor = self.staff[who]
        with pytest.raises((TaskNotFound, PermissionDenied)), self.db.transaction() as s:
            tasks.claim(s, self.rt, task_id=task.id, actor=actor)
        with pytest.raises((TaskNotFound, PermissionDenied)), self.db.transaction() as s:
            tasks.complete(s, self.rt, task_id=task.id, actor=actor, data=data)
        with self.db.transaction() as s:
            row = s.get(Task, task.id)
            assert (row.status, row.assignee) == ("open", None)

    def correlate(self, message: str, payload: dict[str, Any]) -> None:
        self.send(message, payload, actor=MONTHLY_RUN)

    def status(self) -> str:
        with self.db.transaction() as s:
            instance = s.get(ProcessInstance, self.instance_id)
            assert instance.status != "failed", instance.error
            return instance.status

    def end_state(self) -> str:
        """The instance is completed and reached exactly one end event."""
        instance = self.instance()
        assert instance.status == "completed", instance.error
        reached = self.ends()
        assert len(reached) == 1 and reached[0] in END_STATES, reached
        return reached[0]

    def completions(self) -> list[tuple[str | None, str | None]]:
        return [(actor, element) for kind, actor, element in self.trail() if kind == "task.completed"]

    def timers(self, element: str) -> list[Timer]:
        with self.db.transaction() as s:
            return list(s.execute(select(Timer).where(Timer.instance_id == self.instance_id, Timer.kind == "bpmn",
                                                      Timer.element_id == element).order_by(Timer.id)).scalars())

    def registry(self) -> tuple[str | None, date | None, date | None]:
        """The client's effective tier, since when, and a pending downgrade's grace end."""
        with self.db.transaction() as s:
            client = s.get(Client, self.data()["client_id"])
            return client.vip_tier, client.tier_since, client.downgrade_grace_until

    def waiting_for(self) -> set[tuple[str, str]]:
        with self.db.transaction() as s:
            return {(m.message_name, m.element_id) for m in s.execute(
                select(MessageSubscription).where(MessageSubscription.instance_id == self.instance_id)).scalars()}


def test_an_upgrade_is_verified_by_the_clients_own_group_and_activated(db, rt, staff):
    case = Case(db, rt, staff, "VIP-20250603-0006")
    with time_machine.travel(sh(2025, 6, 3, 10), tick=False):
        case.start(evaluation("C06", "silver", 380_000, new_tier="gold"))
        welcome = case.open_task()
        assert (welcome.element_id, welcome.candidate_groups, welcome.lane) == (
            "verify_welcome", ["HZ01-G2"], GROUP_LANE)
        assert welcome.form_key == "vip_verify_welcome"
        assert (welcome.due_at, welcome.due_source) == (sh(2025, 6, 10, 10), "policy")  # 5 WD
        # Clients belong to groups: another group of the same branch never gets the task.
        with pytest.raises(TaskNotFound), db.transaction() as s:
            tasks.complete(s, rt, task_id=welcome.id, actor=staff["s106"], data=WELCOMED)
        case.do("verify_welcome", "s108", WELCOMED)
    assert case.end_state() == "end_activated"
    data = case.data()
    assert (data["change_type"], data["vip_tier"], data["approval_required"]) == ("upgrade", "gold", False)
    assert data["vip_since"] == "2025-06-03" and data["service_marker"] == "VIP-GOLD" and data["priority_queue"]
    assert data["advisory_benefits_enabled"] is True and set(data["benefits"]) >= ADVISORY
    assert "private_room" in data["benefits"]
    trail = case.trail()
    assert trail[0][:2] == ("instance.started", "vip-monthly") and trail[-1][0] == "instance.completed"
    assert case.completions() == [("s108", "verify_welcome")]
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # verify_welcome: 5 WD from the evaluation (06-03 10:00 → 06-10 10:00).
    assert case.offers() == [
        ("verify_welcome", ["HZ01-G2"], None, [], sh(2025, 6, 10, 10)),
    ]


def test_a_diamond_upgrade_is_approved_by_the_branch_head_but_not_by_one_from_the_clients_group(db, rt, staff):
    case = Case(db, rt, staff, "VIP-20250603-0016")
    with time_machine.travel(sh(2025, 6, 3, 10), tick=False) as clock:
        case.start(evaluation("C06", "gold", 1_200_000))
        clock.move_to(sh(2025, 6, 4, 10))
        case.do("verify_welcome", "s108", WELCOMED)
        approve = case.open_task()
        assert (approve.element_id, approve.candidate_groups, approve.lane) == (
            "approve_branch", ["HZ01:branch_head"], BRANCH_LANE)
        assert approve.due_at == sh(2025, 6, 9, 10)  # vip.sla.approve.branch: 3 WD
        # 顾敏 is a branch head, but also in HZ01-G2, the client's own group (excludeGroups).
        case.refused(approve, "s110", {"decision": "approve"})
        case.do("approve_branch", "s101", {"decision": "approve", "comment": "资产达标，同意"})
    assert case.end_state() == "end_activated"
    data = case.data()
    assert (data["target_tier"], data["vip_tier"], data["approval_level"]) == ("diamond", "diamond", "branch")
    assert case.handled == [("verify_welcome", ["HZ01-G2"], "s108"), ("approve_branch", ["HZ01:branch_head"], "s101")]
    assert not [e for e in case.trail() if e[1] == "s110"]  # nothing happened in 顾敏's name
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # approve_branch 3 WD from 06-04 10:00 (06-09), recusing the client's group HZ01-G2.
    assert case.offers() == [
        ("verify_welcome", ["HZ01-G2"], None, [], sh(2025, 6, 10, 10)),
        ("approve_branch", ["HZ01:branch_head"], None, ["group:HZ01-G2"], sh(2025, 6, 9, 10)),
    ]


def test_a_nomination_needs_an_approver_who_is_not_the_nominator(db, rt, staff):
    case = Case(db, rt, staff, "VIP-20250610-0002")
    with time_machine.travel(sh(2025, 6, 10, 10), tick=False):
        # 顾敏 nominates 王秀兰 (HZ01-G1) for diamond after a large inflow (V0b).
        case.start(evaluation("C02", "gold", 2_300_000, trigger="nomination"), actor=staff["s110"])
        nominate = case.open_task()
        assert (nominate.element_id, nominate.candidate_groups) == ("nominate", ["HZ01:account_manager"])
        assert nominate.due_at == sh(2025, 6, 11, 10)  # vip.sla.nominate: 1 WD
        # The form cannot name someone else as the nominator (not a field of the form, refused):
        # the engine records who completed it.
        nomination = {"proposed_tier": "diamond", "nomination_source": "account_manager",
                      "justification": "本月转入资金 150 万，预计长期持有"}
        with pytest.raises(FormValidationError) as refused:
            case.do("nominate", "s110", {**nomination, "nominated_by": "s106"})
        assert [e.field for e in refused.value.errors] == ["nominated_by"]
        case.do("nominate", "s110", nomination)
        assert case.data()["nominated_by"] == "s110"
        case.do("verify_welcome", "s106", WELCOMED)
        approve = case.open_task()
        assert (approve.element_id, approve.candidate_groups) == ("approve_branch", ["HZ01:branch_head"])
        case.refused(approve, "s110", {"decision": "approve"})  # the nominator, though a branch head
        case.do("approve_branch", "s101", {"decision": "approve"})
    assert case.end_state() == "end_activated"
    data = case.data()
    assert (data["trigger"], data["is_override"], data["vip_tier"]) == ("nomination", False, "diamond")
    assert case.completions() == [("s110", "nominate"), ("s106", "verify_welcome"), ("s101", "approve_branch")]
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # nominate 1 WD from 06-10 10:00; welcome 5 WD from the evaluation (06-03); approve 3 WD from
    # 06-10 (06-13), recusing the nominator s110 and the client's group.
    assert case.offers() == [
        ("nominate", ["HZ01:account_manager"], None, [], sh(2025, 6, 11, 10)),
        ("verify_welcome", ["HZ01-G1"], None, [], sh(2025, 6, 10, 10)),
        ("approve_branch", ["HZ01:branch_head"], None, ["group:HZ01-G1", "user:s110"], sh(2025, 6, 13, 10)),
    ]


def test_an_override_below_the_threshold_goes_to_headquarters_and_a_rejection_changes_nothing(db, rt, staff):
    case = Case(db, rt, staff, "VIP-20250610-0003")
    with time_machine.travel(sh(2025, 6, 10, 10), tick=False):
        case.start(evaluation("C06", "gold", 380_000, trigger="nomination"), actor=staff["s108"])
        case.do("nominate", "s108", {"proposed_tier": "diamond", "nomination_source": "account_manager",
                                     "justification": "战略客户，申请特批钻石卡"})
        case.do("verify_welcome", "s108", WELCOMED)
        approve = case.open_task()
        assert (approve.element_id, approve.candidate_groups, approve.lane) == (
            "approve_hq", ["hq_brokerage_mgmt"], HQ_LANE)
        assert approve.due_at == sh(2025, 6, 13, 10)  # vip.sla.approve.hq: 3 WD
        case.do("approve_hq", "s001", {"decision": "reject", "comment": "资产未达钻石门槛，不予特批"})
    assert case.end_state() == "end_rejected"
    data = case.data()
    assert (data["is_override"], data["approval_level"], data["decision"]) == (True, "hq", "reject")
    assert data["vip_tier"] == "gold" and "benefits" not in data  # nothing was activated
    assert case.registry() == ("gold", date(2025, 3, 3), None)  # as the registry had it (demo data)
    assert case.completions() == [("s108", "nominate"), ("s108", "verify_welcome"), ("s001", "approve_hq")]
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # approve_hq 3 WD from 06-10 10:00 (06-13), recusing the nominator s108 and the client's group.
    assert case.offers() == [
        ("nominate", ["HZ01:account_manager"], None, [], sh(2025, 6, 11, 10)),
        ("verify_welcome", ["HZ01-G2"], None, [], sh(2025, 6, 10, 10)),
        ("approve_hq", ["hq_brokerage_mgmt"], None, ["group:HZ01-G2", "user:s108"], sh(2025, 6, 13, 10)),
    ]


@pytest.mark.parametrize(("client", "assets", "welcome", "who", "reason"), [
    # 孙立平 is C2: advisory benefits are rated R3 (vip.advisory_risk_level), no match.
    ("C05", 550_000, WELCOMED, "s303", "no_suitability_match"),
    # 赵敏 is C4 but signed no advisory agreement (demo case VIP-20250603-0004).
    ("C04", 720_000, {**WELCOMED, "advisory_agreement_signed": False}, "s205", "no_advisory_agreement"),
], ids=["no-suitability-match", "no-advisory-agreement"])
def test_advisory_benefits_are_withheld_without_a_suitability_match(db, rt, staff, client, assets, welcome, who,
                                                                    reason):
    case = Case(db, rt, staff, f"VIP-20250603-{client}")
    with time_machine.travel(sh(2025, 6, 3, 10), tick=False):
        case.start(evaluation(client, "silver", assets))
        assert case.open_task().due_at == sh(2025, 6, 10, 10)  # 5 WD
        case.do("verify_welcome", who, welcome)
    assert case.end_state() == "end_activated"
    assert case.handled == [("verify_welcome", [CLIENTS[client]["service_group"]], who)]
    # Who was offered the one step and when it was due: 5 WD from the evaluation (06-03 10:00).
    assert case.offers() == [("verify_welcome", [CLIENTS[client]["service_group"]], None, [], sh(2025, 6, 10, 10))]
    assert case.completions() == [(who, "verify_welcome")]
    data = case.data()
    assert data["vip_tier"] == "gold" and data["advisory_benefits_enabled"] is False
    assert data["advisory_withheld_reason"] == reason
    assert not ADVISORY & set(data["benefits"]) and set(data["advisory_benefits_withheld"]) >= ADVISORY
    assert {"private_room", "trading_platform_deep_info", "points"} <= set(data["benefits"])  # the rest is on


def test_an_unassigned_client_with_an_expired_assessment_is_assigned_and_reassessed(db, rt, staff):
    case = Case(db, rt, staff, "VIP-20250603-0009")
    with time_machine.travel(sh(2025, 6, 3, 10), tick=False) as clock:
        case.start(evaluation("C09", "none", 60_000, risk_assessed_at="2022-11-20"))
        assert case.data()["risk_assessment_valid"] is False  # older than risk.validity_months
        welcome = case.open_task()
        assert welcome.candidate_groups == ["SX01:account_manager"]  # the branch pool (no group yet)
        assert case.registry() == (None, None, None)
        case.do("verify_welcome", "s303", {**WELCOMED, "risk_assessment_valid": False})
        # Silver needs no approval: activated right after the welcome call, on that day.
        assert case.registry() == ("silver", date(2025, 6, 3), None)
        data = case.data()
        assert (data["vip_tier"], data["advisory_withheld_reason"]) == ("silver", "risk_assessment_invalid")
        assert "sms_weekly_picks" not in data["benefits"] and "sms_info_package" in data["benefits"]
        assign = case.open_task()
        assert (assign.element_id, assign.candidate_groups, assign.due_at) == (
            "assign_group", ["SX01:branch_head"], sh(2025, 6, 6, 10))  # 3 WD
        case.do("assign_group", "s301", {"service_group": "SX01-G1"})
        reassess = case.open_task()
        assert reassess.element_id == "reassess_risk" and reassess.due_at == sh(2025, 6, 17, 10)  # 10 WD
        assert reassess.candidate_groups == ["SX01:counter_staff", "SX01-G1"]  # now the client's group
        clock.move_to(sh(2025, 6, 5, 14))
        case.do("reassess_risk", "s302", {"investor_type": "ordinary", "risk_level": "C3",
                                          "risk_assessed_at": "2025-06-05", "questionnaire_ref": "Q-2025-0605-09"})
    assert case.end_state() == "end_activated"
    assert case.completions() == [("s303", "verify_welcome"), ("s301", "assign_group"), ("s302", "reassess_risk")]
    data = case.data()
    assert data["service_group"] == "SX01-G1" and data["risk_assessment_valid"] is True
    assert data["advisory_benefits_enabled"] is True and "sms_weekly_picks" in data["benefits"]
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # welcome 5 WD from 06-03 10:00; assign_group 3 WD (06-06); reassess_risk 10 WD (06-17).
    assert case.offers() == [
        ("verify_welcome", ["SX01:account_manager"], None, [], sh(2025, 6, 10, 10)),
        ("assign_group", ["SX01:branch_head"], None, [], sh(2025, 6, 6, 10)),
        ("reassess_risk", ["SX01:counter_staff", "SX01-G1"], None, [], sh(2025, 6, 17, 10)),
    ]


GRACE_START = evaluation("C07", "gold", 180_000, months_below_threshold=2, preferred_channels=["phone"])


def test_a_downgrade_follows_the_grace_period_and_the_pre_downgrade_contact(db, rt, staff):
    case = Case(db, rt, staff, "VIP-20250603-0011")
    with time_machine.travel(sh(2025, 6, 3, 10), tick=False) as clock:
        case.start(GRACE_START)
        assert case.open_tasks() == []  # nothing to do yet: the client is on the at-risk list
        data = case.data()
        assert (data["change_type"], data["target_tier"], data["at_risk"]) == ("downgrade", "silver", True)
        # vip.downgrade_grace_months = 3 evaluations below; May was the 2nd: one more month (CM).
        [grace] = case.timers("grace_expired")
        assert (grace.status, grace.due_at) == ("waiting", sh(2025, 7, 3, 10))
        assert case.waiting_for() == {("vip_reevaluated", "wait_grace"), ("vip_account_closed", "closed_in_grace")}

        clock.move_to(sh(2025, 7, 1, 10))  # the June evaluation: still below the gold threshold
        case.correlate("vip_reevaluated", {"avg_daily_assets_prev_month": 170_000, "evaluation_period": "2025-06"})
        assert case.status() == "running" and case.data()["months_below_threshold"] == 3
        clock.move_to(sh(2025, 7, 3, 10))
        assert firing.fire_due(db, rt) == 0  # not before the grace period has ended
        clock.shift(timedelta(seconds=1))
        assert firing.fire_due(db, rt) == 1
        contact = case.open_task()
        assert (contact.element_id, contact.candidate_groups) == ("pre_downgrade_contact", ["SX01-G1"])
        # 10 WD before the effective date 08-01: the ten working days 07-18..07-31 lie between.
        assert (contact.assignee, contact.due_at) == (None, sh(2025, 7, 18))
        case.do("pre_downgrade_contact", "s304", {"contacted": True, "channel": "phone",
                                                  "client_reaction": "dissatisfied", "retention_signal": True,
                                                  "recording_id": "REC-VIP-7"})
        [due] = case.timers("downgrade_due")
        assert due.due_at == sh(2025, 8, 1)  # 1st of the month after the notice time
        clock.move_to(sh(2025, 7, 31, 23, 59, 59))
        assert firing.fire_due(db, rt) == 0
        # Contacted, grace over, but not yet effective: still served as gold (demo: gold since
        # 2024-05-06, the downgrade pending since an evaluation before the demo's today).
        assert case.registry() == ("gold", date(2024, 5, 6), date(2025, 8, 1))
        clock.move_to(sh(2025, 8, 1, 0, 0, 1))
        assert firing.fire_due(db, rt) == 1
    assert case.end_state() == "end_downgraded"
    assert case.registry() == ("silver", date(2025, 8, 1), None)
    data = case.data()
    assert (data["vip_tier"], data["downgraded_from"], data["at_risk"]) == ("silver", "gold", False)
    assert "private_room" not in data["benefits"] and "sms_info_package" in data["benefits"]
    assert data["notifications"] == [{"to": "branch:branch_ops_director", "reason": "downgrade_dissatisfied"}]
    assert data["client_notifications"] == [{"channel": "phone", "reason": "downgrade"}]
    kinds = [k for k, _, _ in case.trail()]
    assert kinds.count("timer.fired") == 2 and kinds.count("message.received") == 1
    assert case.completions() == [("s304", "pre_downgrade_contact")]
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # The contact: 10 WD before the 08-01 effective date (07-18..07-31).
    assert case.offers() == [
        ("pre_downgrade_contact", ["SX01-G1"], None, [], sh(2025, 7, 18)),
    ]


def test_a_grace_period_ending_too_late_for_ten_working_days_of_notice_moves_the_downgrade_a_month(db, rt, staff):
    case = Case(db, rt, staff, "VIP-20250917-0001")
    with time_machine.travel(sh(2025, 9, 17, 10), tick=False) as clock:
        case.start({**GRACE_START, "evaluation_period": "2025-08", "evaluated_at": "2025-09-17T10:00:00+08:00"})
        assert case.open_tasks() == []
        data = case.data()
        # Grace ends 10-17; 14 days on is 10-31, so the downgrade would take effect on 11-01.
        assert data["downgrade_effective_at"] == "2025-11-01T00:00:00+08:00"
        [grace] = case.timers("grace_expired")
        assert grace.due_at == sh(2025, 10, 17, 10)
        clock.move_to(sh(2025, 10, 17, 10, 0, 1))
        assert firing.fire_due(db, rt) == 1
        # 10 WD before 11-01 is 10-17 00:00, already past: the downgrade moves to 12-01 and the
        # contact is due 10 WD before it.
        contact = case.open_task()
        assert (contact.element_id, contact.candidate_groups, contact.assignee, contact.due_at) == (
            "pre_downgrade_contact", ["SX01-G1"], None, sh(2025, 11, 17))
        case.do("pre_downgrade_contact", "s304", {"contacted": True, "channel": "phone",
                                                  "client_reaction": "accepts", "retention_signal": False,
                                                  "recording_id": "REC-VIP-8"})
        [due] = case.timers("downgrade_due")
        assert due.due_at == sh(2025, 12, 1)
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # The contact: 10 WD before the 12-01 effective date (11-17..11-28).
    assert case.offers() == [
        ("pre_downgrade_contact", ["SX01-G1"], None, [], sh(2025, 11, 17)),
    ]


def test_the_welcome_call_is_due_five_working_days_after_the_evaluation_not_after_the_case_started(db, rt, staff):
    case = Case(db, rt, staff, "VIP-20250605-0001")
    # The evaluation ran on 06-03 10:00; its case reached the group two days later.
    with time_machine.travel(sh(2025, 6, 5, 15), tick=False):
        case.start(evaluation("C06", "silver", 380_000, new_tier="gold"))
        welcome = case.open_task()
        assert (welcome.element_id, welcome.candidate_groups, welcome.assignee) == ("verify_welcome", ["HZ01-G2"],
                                                                                    None)
        assert (welcome.due_at, welcome.due_source) == (sh(2025, 6, 10, 10), "policy")  # 5 WD from 06-03 10:00
        case.do("verify_welcome", "s108", WELCOMED)
    assert case.end_state() == "end_activated"
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # 5 WD from the evaluation at 06-03 10:00, not from the start.
    assert case.offers() == [
        ("verify_welcome", ["HZ01-G2"], None, [], sh(2025, 6, 10, 10)),
    ]


def test_no_downgrade_when_the_assets_recover_within_the_grace_period(db, rt, staff):
    case = Case(db, rt, staff, "VIP-20250603-0012")
    with time_machine.travel(sh(2025, 6, 3, 10), tick=False) as clock:
        case.start(GRACE_START)
        assert [(t.status, t.due_at) for t in case.timers("grace_expired")] == [("waiting", sh(2025, 7, 3, 10))]
        clock.move_to(sh(2025, 7, 1, 10))
        case.correlate("vip_reevaluated", {"avg_daily_assets_prev_month": 320_000, "evaluation_period": "2025-06"})
        clock.move_to(sh(2025, 8, 1, 9))
        assert firing.fire_due(db, rt) == 0  # the grace timer went with the recovery
    assert case.end_state() == "end_recovered"
    assert [t.status for t in case.timers("grace_expired")] == ["cancelled"]
    assert case.waiting_for() == set()
    with db.transaction() as s:  # nobody was ever asked to contact the client
        assert s.execute(select(Task).where(Task.instance_id == case.instance_id)).first() is None
    data = case.data()
    assert (data["vip_tier"], data["recovered"], data["at_risk"]) == ("gold", True, False)
    # Still gold, since when it was; the pending downgrade is settled.
    assert case.registry() == ("gold", date(2024, 5, 6), None)
    assert [k for k, _, _ in case.trail() if k not in passage.KINDS] == [
        "instance.started", "message.received", "client.vip_tier", "instance.completed"]
    assert case.offers() == []  # no step was ever offered to anyone


def test_assets_recovering_after_the_contact_but_before_the_effective_date_cancel_the_downgrade(db, rt, staff):
    case = Case(db, rt, staff, "VIP-20250603-0013")
    with time_machine.travel(sh(2025, 6, 3, 10, 5), tick=False) as clock:
        case.start({**GRACE_START, "months_below_threshold": 3})  # the grace period is already used up
        case.do("pre_downgrade_contact", "s303", {"contacted": True, "client_reaction": "will_add_funds"})
        assert case.waiting_for() == {("vip_reevaluated", "wait_effective"),
                                      ("vip_account_closed", "closed_in_notice")}
        clock.move_to(sh(2025, 6, 20, 15))  # an ad-hoc evaluation after a large deposit
        case.correlate("vip_reevaluated", {"avg_daily_assets_prev_month": 310_000})
    assert case.end_state() == "end_recovered_notice"
    assert [t.status for t in case.timers("downgrade_due")] == ["cancelled"]
    assert case.data()["vip_tier"] == "gold"
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # The contact: 10 WD before the 07-01 effective date (06-17..06-30).
    assert case.offers() == [
        ("pre_downgrade_contact", ["SX01-G1"], None, [], sh(2025, 6, 17)),
    ]


def test_a_client_close_to_the_next_threshold_gets_a_nurturing_plan(db, rt, staff):
    case = Case(db, rt, staff, "VIP-20250603-0008")
    with time_machine.travel(sh(2025, 6, 3, 10), tick=False):
        # 260,000 is ≥ 80 % (vip.prospect_ratio) of the gold threshold: a target VIP (目标贵宾客户).
        case.start(evaluation("C08", "silver", 260_000))
        plan = case.open_task()
        assert (plan.element_id, plan.candidate_groups, plan.lane) == ("nurture_plan", ["NB01-G2"], GROUP_LANE)
        assert plan.due_at == sh(2025, 6, 17, 10)  # vip.sla.nurture_plan: 10 WD
        case.do("nurture_plan", "s206", {"plan": "季度资产配置建议；邀请参加投资者教育活动",
                                         "next_contact_at": "2025-07-15"})
    assert case.end_state() == "end_nurtured"
    data = case.data()
    assert (data["change_type"], data["prospect_target_tier"], data["prospect"]) == ("prospect", "gold", True)
    assert data["vip_tier"] == "silver"  # nothing the client sees changes
    assert case.completions() == [("s206", "nurture_plan")]
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # nurture_plan 10 WD from 06-03 10:00 (06-04..06-17).
    assert case.offers() == [
        ("nurture_plan", ["NB01-G2"], None, [], sh(2025, 6, 17, 10)),
    ]


def test_an_evaluation_without_change_ends_at_once(db, rt, staff):
    case = Case(db, rt, staff, "VIP-20250603-0001")
    with time_machine.travel(sh(2025, 6, 3, 10), tick=False):
        case.start(evaluation("C02", "diamond", 2_300_000))
    assert case.end_state() == "end_no_change"
    assert case.open_tasks() == [] and case.data()["change_type"] == "none"
    assert case.offers() == []  # no step was ever offered to anyone


def test_the_client_declines_at_the_welcome_call_or_by_message_during_the_approval(db, rt, staff):
    by_form = Case(db, rt, staff, "VIP-DECLINE-1")
    by_message = Case(db, rt, staff, "VIP-DECLINE-2")
    with time_machine.travel(sh(2025, 6, 3, 10), tick=False):
        by_form.start(evaluation("C06", "silver", 380_000))
        by_form.do("verify_welcome", "s108", {**WELCOMED, "client_accepts_membership": "no"})
        by_message.start(evaluation("C03", "gold", 1_500_000))
        by_message.do("verify_welcome", "s205", WELCOMED)
        approve = by_message.open_task()
        assert approve.candidate_groups == ["NB01:branch_head"]
        by_message.correlate("vip_client_declines", {"decline_reason": "不希望接收营销信息"})
        with db.transaction() as s:
            assert s.get(Task, approve.id).status == "cancelled"
    for case in (by_form, by_message):
        assert case.end_state() == "end_declined"
        assert case.data()["vip_opt_out"] is True and "benefits" not in case.data()
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # welcome 5 WD from 06-03 10:00; the cancelled approval 3 WD from 06-03 10:00 (06-06).
    assert by_form.offers() == [
        ("verify_welcome", ["HZ01-G2"], None, [], sh(2025, 6, 10, 10)),
    ]
    assert by_message.offers() == [
        ("verify_welcome", ["NB01-G1"], None, [], sh(2025, 6, 10, 10)),
        ("approve_branch", ["NB01:branch_head"], None, ["group:NB01-G1"], sh(2025, 6, 6, 10)),
    ]


def test_closing_the_account_during_the_grace_period_ends_the_case(db, rt, staff):
    case = Case(db, rt, staff, "VIP-20250603-0014")
    with time_machine.travel(sh(2025, 6, 3, 10), tick=False) as clock:
        case.start(GRACE_START)
        clock.move_to(sh(2025, 6, 20, 11))
        case.correlate("vip_account_closed", {"closed_at": "2025-06-20T11:00:00+08:00"})
    assert case.end_state() == "end_closed"
    assert [t.status for t in case.timers("grace_expired")] == ["cancelled"]
    assert (case.data()["vip_tier"], case.data()["benefits"]) == ("none", [])
    assert case.registry() == (None, None, None)
    assert case.offers() == []  # no step was ever offered to anyone


def test_due_dates_are_on_working_days_counting_make_up_days(db, rt, staff):
    case = Case(db, rt, staff, "VIP-20250926-0001")
    with time_machine.travel(sh(2025, 9, 26, 10), tick=False):  # Friday before National Day
        case.start(evaluation("C06", "silver", 380_000, evaluation_period="2025-08",
                              evaluated_at="2025-09-26T10:00:00+08:00"))
    welcome = case.open_task()
    # 5 WD: Sun 09-28 is a 调休 working day (not a trading day), 10-01..08 are holidays.
    assert (welcome.due_at, welcome.calendar_incomplete) == (sh(2025, 10, 10, 10), False)
    assert welcome.at_risk_at == sh(2025, 10, 9, 10)  # 80 % of the target: 4 WD
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # 5 WD from 09-26 10:00: Sun 09-28 (make-up), 09-29, 09-30, 10-09, 10-10.
    assert case.offers() == [
        ("verify_welcome", ["HZ01-G2"], None, [], sh(2025, 10, 10, 10)),
    ]


def test_every_threshold_and_the_grace_period_come_from_the_defaults_or_the_start_data():
    assert settings.default("vip.silver") == 50_000 and settings.default("vip.gold") == 300_000
    assert settings.default("vip.diamond") == 1_000_000 and settings.default("vip.downgrade_grace_months") == 3
    base = evaluation("C03", "gold", 1_500_000)
    assert evaluate(base)["target_tier"] == "diamond"
    result = evaluate({**base, "diamond_threshold": 1_800_000})  # per-instance override of vip.diamond
    assert (result["target_tier"], result["change_type"]) == ("gold", "prospect")
    assert result["diamond_threshold"] == 1_800_000
    assert evaluate(evaluation("C08", "none", 50_000))["target_tier"] == "silver"  # the threshold itself counts
    assert evaluate(evaluation("C08", "none", 49_999))["change_type"] == "prospect"
    assert evaluate({**evaluation("C08", "none", 49_999), "silver_threshold": 40_000})["target_tier"] == "silver"
    assert evaluate(evaluation("C08", "none", 39_999))["change_type"] == "none"
    assert evaluate(evaluation("C02", "gold", 12_000_000, trigger="nomination", proposed_tier="diamond")
                    )["approval_level"] == "hq"  # ≥ vip.hq_approval_assets
    contribution = evaluate({**evaluation("C08", "silver", 65_000), "commission_threshold_gold": 20_000,
                             "trailing12m_commission": 25_000})
    assert (contribution["target_tier"], contribution["change_type"]) == ("gold", "upgrade")
    with pytest.raises(ValueError, match="disagrees"):
        evaluate({**base, "new_tier": "gold"})
    with pytest.raises(ValueError, match="increase"):
        evaluate({**base, "gold_threshold": 2_000_000})
    state = {**evaluate(evaluation("C07", "gold", 180_000)), "months_below_threshold": 2,
             "below_counted_for": "2025-05"}
    assert reevaluate({**state, "avg_daily_assets_prev_month": 300_000})["recovered"] is True
    below = reevaluate({**state, "avg_daily_assets_prev_month": 40_000, "evaluation_period": "2025-06"})
    assert (below["recovered"], below["target_tier"], below["months_below_threshold"]) == (False, "none", 3)
    ad_hoc = reevaluate({**state, "avg_daily_assets_prev_month": 200_000})  # same period: not another month
    assert (ad_hoc["recovered"], ad_hoc["months_below_threshold"]) == (False, 2)


def test_the_grace_period_is_configurable_per_instance(db, rt, staff):
    case = Case(db, rt, staff, "VIP-20250603-0015")
    with time_machine.travel(sh(2025, 6, 3, 10), tick=False):
        case.start({**GRACE_START, "months_below_threshold": 1, "downgrade_grace_months": 6})
    [grace] = case.timers("grace_expired")
    assert grace.due_at == sh(2025, 11, 3, 10)  # 6 evaluations below: five more calendar months
    data = case.data()
    assert data["downgrade_effective_at"] == "2025-12-01T00:00:00+08:00"
    assert data["downgrade_grace_months"] == 6 and data["silver_threshold"] == settings.default("vip.silver")
    assert case.offers() == []  # no step was ever offered to anyone


def test_the_diagram_deploys_and_has_interchange_for_every_element(rt):
    path = WORKFLOWS / "vip_onboarding.bpmn"
    processes, problems = deployments.check(None, rt, bundle.from_paths([path]))
    assert problems == [] and [p.key for p in processes] == ["vip_onboarding"]
    ns = {"bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL",
          "bpmndi": "http://www.omg.org/spec/BPMN/20100524/DI", "di": "http://www.omg.org/spec/DD/20100524/DI"}
    tree = etree.parse(str(path))
    shapes = {s.get("bpmnElement") for s in tree.iterfind(".//bpmndi:BPMNShape", ns)}
    edges = {e.get("bpmnElement"): len(e.findall("di:waypoint", ns)) for e in tree.iterfind(".//bpmndi:BPMNEdge", ns)}
    flows = {f.get("id") for f in tree.iterfind(".//bpmn:sequenceFlow", ns)} | {
        f.get("id") for f in tree.iterfind(".//bpmn:messageFlow", ns)}
    kinds = ("startEvent", "endEvent", "userTask", "serviceTask", "receiveTask", "exclusiveGateway",
             "boundaryEvent", "lane", "participant")
    nodes = {el.get("id") for kind in kinds for el in tree.iterfind(f".//bpmn:{kind}", ns)}
    assert nodes - shapes == set() and set(edges) == flows and min(edges.values()) >= 2
    laned = {ref.text for ref in tree.iterfind(".//bpmn:flowNodeRef", ns)}
    process = tree.find("bpmn:process", ns)
    assert {el.get("id") for el in process if el.tag.endswith(("Event", "Task", "Gateway"))} == laned
    camunda = "{http://camunda.org/schema/1.0/bpmn}"
    for task in tree.iterfind(".//bpmn:userTask", ns):  # every user task: a form and candidate groups
        form = WORKFLOWS / "forms" / f"{task.get(f'{camunda}formKey')}.json"
        assert task.get(f"{camunda}candidateGroups") and form.exists(), task.get("id")
    for approval in ("approve_branch", "approve_hq"):  # approver ≠ nominator, nor the client's group
        props = {p.get("name"): p.get("value") for p in tree.iterfind(
            f".//bpmn:userTask[@id='{approval}']//camunda:property", {**ns, "camunda": camunda[1:-1]})}
        assert props == {"excludeUsers": "${nominated_by}", "excludeGroups": "${service_group}"}
