"""Field-level visibility of case data (brief §6.3 "Who may see what"), engine level, on the demo
registry: the policy files in workflows/field_policy/ decide which variables of a case each
reader is shown (callback answers, complaint narrative, retention reasons), and a policy a
process owner gets wrong is refused with a message saying where. Who may open a case at all is
tests/test_case_visibility.py's; here every reader already may, or the expected value is None."""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import time_machine
from sqlalchemy import select

from engine import audit
from engine.access import field_policy, identity
from engine.access.identity import Actor
from engine.calendars import SHANGHAI
from engine.config import PROJECT_ROOT
from engine.errors import FieldPolicyInvalid, InstanceNotFound
from engine.models import AuditEvent, ProcessInstance, Task
from engine.process import instances, messages, tasks
from tests.brokerage.test_callback import ANSWERS_OK, IDENTITY_OK, QA_OK, REACHED
from tests.brokerage.test_retention import ACCEPT_TRANSFER, C06, NOT_RETAINED, REVIEWED

POLICY = field_policy.load_directory(PROJECT_ROOT / "workflows" / field_policy.DIRECTORY)
MONDAY = datetime(2025, 6, 16, 10, tzinfo=SHANGHAI)
CALLER, OTHER_AGENT, CC_SUPERVISOR, HQ_COMPLIANCE = "s003", "s004", "s002", "s006"
# The call found a staff-conduct item (brief §2.3 K6): the account was operated by staff.
CONDUCT_ANSWERS = {**ANSWERS_OK, "staff_operated_account": "是", "staff_attitude": 2}
ALL_CALLBACK = frozenset({"summary", "answers", "staff_conduct", "exceptions"})
# Brief §6.3, column "Callback answers", for a completed callback of C06 (HZ01, group HZ01-G2)
# whose answers name staff conduct: the groups each reader is shown; None: the case does not
# exist for them (case-level visibility).
CALLBACK_COLUMN: dict[str, frozenset[str] | None] = {
    CALLER: ALL_CALLBACK,  # call_center_agent: their own calls
    OTHER_AGENT: None,  # another agent, who took no part in the call: offered it once, not any more
    CC_SUPERVISOR: ALL_CALLBACK,  # call_center_supervisor: all
    HQ_COMPLIANCE: ALL_CALLBACK,  # compliance (HQ): all
    "s109": ALL_CALLBACK,  # compliance (HZ01): all
    "s101": ALL_CALLBACK,  # branch_head: whole branch
    "s102": ALL_CALLBACK,  # branch_ops_director
    "s103": ALL_CALLBACK,  # branch_cs_director
    "s108": frozenset({"summary"}),  # account_manager of the client's group: satisfaction only
    "s104": frozenset({"summary"}),  # counter staff in the client's group: a group member
    "s007": frozenset(),  # hq_complaint_dept: complaint-linked callbacks only
    "s001": frozenset(),  # hq_brokerage_mgmt: aggregates, not case answers
    "admin": frozenset(),  # administering the system is no reason to read answers
    "s106": None,  # account manager of another group (HZ01-G1)
    "s105": None,  # counter staff of another group
    "s201": None,  # another branch's head
}


@pytest.fixture
def demo_data(demo_loaded) -> None:
    """The demo people, registry and workflows/ deployed, as ``bpm demo load`` does."""


def actor(session, username: str) -> Actor:
    return identity.actor_for(session, identity.get_user(session, username))


def complete(db, rt, key: str, element: str, username: str, data: dict[str, Any]) -> None:
    with db.transaction() as s:
        task = s.execute(select(Task).where(Task.business_key == key, Task.element_id == element,
                                            Task.status.in_(("open", "claimed")))).scalar_one()
        tasks.complete(s, rt, task_id=task.id, actor=actor(s, username), data=data)


def conduct_callback(db, rt, key: str = "CB-20250616-0001", **answers: Any) -> int:
    """A periodic callback of C06, reached by 高晨 (s003), whose answers name staff conduct:
    compliance handles the exception (谢文), QA reviews it (许婧); the case completes."""
    with db.transaction() as s:
        instance_id = instances.start(s, rt, process_key="callback", business_key=key, actor=Actor.system("crm"),
                                      data={"callback_type": "periodic", "client_id": "C06",
                                            "qa_sample_rate": 0}).id
    complete(db, rt, key, "call_attempt", CALLER, REACHED)
    complete(db, rt, key, "verify_identity", CALLER, IDENTITY_OK)
    complete(db, rt, key, "questionnaire", CALLER, {**CONDUCT_ANSWERS, **answers})
    complete(db, rt, key, "handle_compliance", HQ_COMPLIANCE,
             {"finding": "客户经理代客下单，已核实", "action": "interview_staff",
              "closed_at": "2025-06-16T15:00:00+08:00"})
    complete(db, rt, key, "qa_review", CC_SUPERVISOR, QA_OK)
    return instance_id


def screened(db, rt, username: str, instance_id: int) -> field_policy.ScreenedCase | None:
    """The case as ``username`` is shown it (None when they may not open it)."""
    with db.transaction() as s:
        reader = actor(s, username)
        try:
            instance = instances.get(s, instance_id, actor=reader)
        except InstanceNotFound:
            return None
        return field_policy.screen_case(s, POLICY, actor=reader, instance=instance,
                                        data=instances.data_of(s, rt, instance))


def full_data(db, rt, instance_id: int) -> dict[str, Any]:
    with db.transaction() as s:
        return instances.data_of(s, rt, s.get(ProcessInstance, instance_id))


def shown_groups(db, rt, username: str, instance_id: int) -> frozenset[str] | None:
    """The field groups of the case's policy whose variables ``username`` is shown, checking on
    the way that a withheld group's variables are absent from data and facts, a shown group's
    are all there with their values, and ``withheld`` lists exactly what was left out."""
    case = screened(db, rt, username, instance_id)
    if case is None:
        return None
    assert case.data is not None
    data = full_data(db, rt, instance_id)
    with db.transaction() as s:
        facts = s.get(ProcessInstance, instance_id).facts or {}
    # Facts are the latest value across parallel branches: a variable may be in one, not the other.
    names = set(data) | set(facts)
    policy = POLICY.of(case.instance.process_key)
    assert policy is not None
    present = {g.key: sorted(g.fields & names) for g in policy.groups.values() if g.fields & names}
    withheld = {w.group: w.fields for w in case.withheld}
    assert all(withheld[g] == present[g] for g in withheld), (username, withheld, present)
    for group, fields in present.items():
        for name in fields:
            if group in withheld:
                assert name not in case.data and name not in (case.facts or {}), (username, name)
            else:
                assert case.data.get(name) == data.get(name) and (case.facts or {}).get(name) == facts.get(name)
    restricted = {n for ns in present.values() for n in ns}
    for shown, original in ((case.data, data), (case.facts or {}, facts)):  # the rest is untouched
        assert {k: shown[k] for k in original if k not in restricted} == \
            {k: v for k, v in original.items() if k not in restricted}
    return frozenset(present) - frozenset(withheld)


# -- the policy files ---------------------------------------------------------------------------
def write(directory: Path, name: str, content: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False),
                    encoding="utf-8")
    return directory


def minimal(**changes: Any) -> dict[str, Any]:
    return {"process_key": "callback",
            "field_groups": {"summary": {"title": "满意度", "fields": ["service_satisfaction"]}},
            "roles": {"compliance": [{"see": ["summary"]}]}, **changes}


def refusal(directory: Path) -> list[str]:
    with pytest.raises(FieldPolicyInvalid) as caught:
        field_policy.load_directory(directory)
    return caught.value.problems


def test_the_shipped_policies_load_and_cover_callback_complaint_and_retention():
    assert set(POLICY.processes) == {"callback", "complaint", "retention"}
    callback, complaint, retention = (POLICY.processes[k] for k in ("callback", "complaint", "retention"))
    assert callback.groups["summary"].fields == {"service_satisfaction"}
    assert {"staff_operated_account", "discretionary_mandate"} <= callback.groups["staff_conduct"].fields
    assert {"summary", "facts_found"} <= complaint.groups["content"].fields
    assert {"reason_code", "competitor"} <= retention.groups["retention_reasons"].fields


def test_a_policy_naming_an_unknown_role_is_refused_with_the_file_and_the_role(tmp_path):
    directory = write(tmp_path / "field_policy", "callback.json",
                      minimal(roles={"compliance": [{"see": ["summary"]}], "acount_manager": [{"see": ["summary"]}]}))
    [problem] = refusal(directory)
    assert problem.startswith("field_policy/callback.json: roles/acount_manager: unknown role 'acount_manager'")
    assert "account_manager" in problem and "'service_group'" in problem  # it says what a role may be


@pytest.mark.parametrize(("group", "message"), [
    ({"fields": "service_satisfaction"}, "field_groups/summary/fields: 'service_satisfaction' is not of type 'array'"),
    ({"fields": []}, "field_groups/summary/fields: [] should be non-empty"),
    ({"fields": ["service satisfaction"]}, "field_groups/summary/fields/0: 'service satisfaction' does not match"),
    ({"variables": ["service_satisfaction"]}, "field_groups/summary: 'fields' is a required property"),
    ({"fields": ["service_satisfaction"], "withhold_when": [{"reader_is": "caller"}]},
     "field_groups/summary/withhold_when/0: Additional properties are not allowed ('reader_is' was unexpected)"),
])
def test_field_groups_in_the_wrong_format_are_refused_saying_where(tmp_path, group, message):
    directory = write(tmp_path / "field_policy", "callback.json", minimal(field_groups={"summary": group}))
    problems = refusal(directory)
    assert any(p.startswith(f"field_policy/callback.json: {message}") for p in problems), problems


def test_an_unknown_role_is_reported_beside_a_format_problem_in_the_same_file(tmp_path):
    directory = write(tmp_path / "field_policy", "callback.json",
                      minimal(field_groups={"summary": {"fields": "service_satisfaction"}}, roles={"teller": []}))
    assert [p.split(": ")[1] for p in refusal(directory)] == ["field_groups/summary/fields", "roles/teller"]


def test_every_problem_is_reported_at_once_and_nothing_is_loaded(tmp_path):
    directory = tmp_path / "field_policy"
    write(directory, "a_broken.json", '{"process_key": "callback",\n "roles": }')
    write(directory, "callback.json", minimal(
        field_groups={"summary": {"fields": ["service_satisfaction"]},
                      "scores": {"fields": ["service_satisfaction", "staff_attitude"]}},
        roles={"compliance": [{"see": ["summary", "conduct"]}]}))
    write(directory, "copy.json", minimal())
    assert refusal(directory) == [
        "field_policy/a_broken.json:2: not JSON: Expecting value",
        "field_policy/callback.json: field_groups/scores/fields: 'service_satisfaction' is already in field "
        "group 'summary'; a variable belongs to one group",
        "field_policy/callback.json: roles/compliance/0/see: no field group 'conduct' (defined: scores, summary)",
        "field_policy/copy.json: process_key: 'callback' already has a policy (field_policy/callback.json); "
        "one file per process",
    ]


def test_a_refusal_reads_as_one_message_listing_each_problem():
    with pytest.raises(FieldPolicyInvalid) as caught:
        field_policy.parse(minimal(roles={"teller": []}), source="field_policy/callback.json")
    text = str(caught.value)
    assert text.splitlines()[0] == "the field policy was refused: 1 problem(s)"
    assert text.splitlines()[1].startswith("  field_policy/callback.json: roles/teller: unknown role 'teller'")
    assert caught.value.code == "field_policy_invalid"


def test_without_a_policy_directory_nothing_is_restricted(tmp_path):
    policy = field_policy.load_directory(tmp_path / "field_policy")
    assert policy.processes == {} and policy.of("callback") is None


# -- callback answers ---------------------------------------------------------------------------
def test_each_role_sees_its_column_of_a_completed_callback_with_staff_conduct_answers(db, rt, demo_data):
    with time_machine.travel(MONDAY, tick=False):
        instance_id = conduct_callback(db, rt)
    data = full_data(db, rt, instance_id)
    assert (data["exception_route"], data["staff_operated_account"]) == ("compliance", "是")
    assert {username: shown_groups(db, rt, username, instance_id) for username in CALLBACK_COLUMN} == CALLBACK_COLUMN


def test_the_caller_sees_their_own_calls_answers_in_full_and_another_agent_none_of_them(db, rt, demo_data):
    with time_machine.travel(MONDAY, tick=False):
        instance_id = conduct_callback(db, rt)
    assert screened(db, rt, OTHER_AGENT, instance_id) is None  # took no part: no case at all
    # HQ complaints reads the case, but not the answers of a callback that raised no complaint.
    mine, theirs = screened(db, rt, CALLER, instance_id), screened(db, rt, "s007", instance_id)
    assert mine is not None and theirs is not None and mine.data is not None and theirs.data is not None
    assert mine.withheld == [] and mine.data == full_data(db, rt, instance_id)
    assert {k: mine.data[k] for k in CONDUCT_ANSWERS if k != "recording_id"} == \
        {k: v for k, v in CONDUCT_ANSWERS.items() if k != "recording_id"}
    assert "service_satisfaction" not in theirs.data and "staff_operated_account" not in theirs.data
    assert theirs.data["callback_type"] == "periodic" and theirs.data["caller"] == CALLER  # unrestricted


def test_a_group_member_is_shown_the_satisfaction_score_and_told_what_was_withheld(db, rt, demo_data):
    with time_machine.travel(MONDAY, tick=False):
        instance_id = conduct_callback(db, rt)
    case = screened(db, rt, "s108", instance_id)
    assert case is not None and case.data is not None
    assert case.data["service_satisfaction"] == 5 and case.facts == {
        "callback_type": "periodic", "service_group": "HZ01-G2", "attempt_no": 1, "result": "reached",
        "service_satisfaction": 5}
    assert [(w.group, w.title) for w in case.withheld] == [
        ("answers", "回访问卷答案 Questionnaire answers"),
        ("exceptions", "回访异常与处理 Exceptions found and their handling"),
        ("staff_conduct", "员工执业行为 Staff-conduct answers")]
    assert next(w for w in case.withheld if w.group == "staff_conduct").fields == [
        "discretionary_mandate", "opened_by_self", "risk_disclosed", "staff_attitude", "staff_operated_account"]


def test_a_complaint_linked_callback_is_shown_to_hq_complaints_but_its_complaint_never_to_the_accused(
        db, rt, demo_data):
    handover = {"complaint_summary": "客户称客户经理魏强代其下单", "business_line": "brokerage",
                "client_request": "staff_sanction", "amount_claimed": 0,
                "alleged_violations": ["staff_operating_account"], "subject_staff_ids": ["s108"]}
    key = "CB-20250616-0002"
    with time_machine.travel(MONDAY, tick=False):
        with db.transaction() as s:
            instance_id = instances.start(s, rt, process_key="callback", business_key=key,
                                          actor=Actor.system("crm"),
                                          data={"callback_type": "periodic", "client_id": "C06",
                                                "qa_sample_rate": 0}).id
        complete(db, rt, key, "call_attempt", CALLER, REACHED)
        complete(db, rt, key, "verify_identity", CALLER, IDENTITY_OK)
        complete(db, rt, key, "questionnaire", CALLER, {**CONDUCT_ANSWERS, "wants_to_complain": True})
        complete(db, rt, key, "complaint_handover", CALLER, handover)
    everything = ALL_CALLBACK | {"complaint_raised"}
    assert shown_groups(db, rt, "s007", instance_id) == everything  # complaint-linked: HQ complaints sees it
    assert shown_groups(db, rt, CALLER, instance_id) == everything
    assert shown_groups(db, rt, "s103", instance_id) == everything
    # The accused (魏强, HZ01-G2) and his group read their client's callback: the score only.
    assert shown_groups(db, rt, "s108", instance_id) == {"summary"}
    assert shown_groups(db, rt, "s104", instance_id) == {"summary"}


# -- complaint narrative ------------------------------------------------------------------------
@pytest.mark.sqlite
def test_recusal_hides_the_case_from_the_subjects_group_from_the_first_step_after_registration(db, rt, demo_data):
    # A complaint raised on a call about 杜娟 (s107, HZ01-G1), for her group's client C02: it
    # starts straight at the caller's acknowledgement, which already recuses her and her group
    # case-wide (every step after the registration does): they never read their client's case.
    payload = {"client_id": "C02", "branch_code": "HZ01", "channel": "callback", "request_kind": "complaint",
               "received_at": "2025-06-16T09:40:00+08:00", "summary": "客户称客户经理推荐了超出其风险等级的产品",
               "business_line": "product_sales", "client_request": "compensation", "amount_claimed": 38000,
               "alleged_violations": ["suitability_mismatch"], "subject_staff_ids": ["s107"],
               "recording_id": "REC-CB-1", "first_contact_owner": OTHER_AGENT, "callback_type": "periodic",
               "callback_findings": ["wants_to_complain"], "origin_business_key": "CB-20250616-0009",
               "origin_process": "callback"}
    with time_machine.travel(MONDAY, tick=False):
        with db.transaction() as s:
            complaint = messages.correlate(s, rt, name="complaint_from_callback", correlation_key=None,
                                           actor=Actor.system(OTHER_AGENT), payload=payload)
        column = {
            "s107": None,  # the subject
            "s106": None,  # her group's account manager
            "s105": None,  # her group's counter staff
            OTHER_AGENT: frozenset({"content"}),  # first-contact owner (call_center_agent)
            # Another agent and the branch's counter staff: the acknowledgement is the
            # first-contact owner's, offered to neither (candidates of a claimed step).
            CALLER: None,
            "s104": None,
            "s103": frozenset({"content"}),  # branch_cs_director
            "s109": frozenset({"content"}),  # compliance
            "s007": frozenset({"content"}),  # hq_complaint_dept
            CC_SUPERVISOR: frozenset(),  # call_center_supervisor: satisfaction results only
            "s001": frozenset(),  # hq_brokerage_mgmt: aggregates only
        }
        assert {u: shown_groups(db, rt, u, complaint.id) for u in column} == column
        complete(db, rt, complaint.business_key, "acknowledge", OTHER_AGENT,
                 {"contact_at": "2025-06-16T10:30:00+08:00", "contact_channel": "phone", "contact_result": "reached",
                  "client_expectation": "赔偿损失", "recording_id": "REC-1"})
        # The investigation recuses them as well: the case stays gone for them.
        assert [shown_groups(db, rt, u, complaint.id) for u in ("s107", "s106", "s105")] == [None, None, None]
        # Another group's account manager is offered the investigation, and reads the
        # narrative once he takes it (a case he works on).
        assert shown_groups(db, rt, "s108", complaint.id) == frozenset()
        with db.transaction() as s:
            investigate = s.execute(select(Task).where(Task.instance_id == complaint.id,
                                                       Task.element_id == "investigate")).scalar_one()
            tasks.claim(s, rt, task_id=investigate.id, actor=actor(s, "s108"))
        assert shown_groups(db, rt, "s108", complaint.id) == {"content"}


# -- retention reasons --------------------------------------------------------------------------
def test_retention_reasons_go_to_who_handled_the_case_the_clients_group_and_management(db, rt, demo_data):
    key = "RET-20250616-0001"
    with time_machine.travel(MONDAY, tick=False):
        with db.transaction() as s:
            instance_id = messages.correlate(s, rt, name="retention_request_received", correlation_key=key,
                                             actor=Actor.system("counter"),
                                             payload={"channel": "counter", "account_status": {}, **C06}).id
        complete(db, rt, key, "accept", "s105", ACCEPT_TRANSFER)  # 沈洁, HZ01 counter, of another group
        complete(db, rt, key, "retention_conversation", "s108", NOT_RETAINED)  # 魏强, the client's group
    reasons = frozenset({"retention_reasons"})
    column = {
        "s105": reasons,  # counter_staff: cases they handled
        "s104": reasons,  # a member of the client's group HZ01-G2
        "s108": reasons,  # account_manager: own group's cases
        "s101": reasons, "s102": reasons, "s103": reasons,  # branch management: whole branch
        "s109": reasons, HQ_COMPLIANCE: reasons,  # compliance: all
        "s007": reasons,  # hq_complaint_dept: all
        "s001": reasons,  # hq_brokerage_mgmt: aggregates and cases
        CC_SUPERVISOR: frozenset(),  # call_center_supervisor: no
        CALLER: None,  # call_center_agent: no (not even the case)
        "s106": None,  # another group's account manager
    }
    assert {u: shown_groups(db, rt, u, instance_id) for u in column} == column


def test_the_post_hoc_review_findings_are_kept_from_the_counter_and_the_group_they_judge(db, rt, demo_data):
    key = "RET-20250616-0001"
    with time_machine.travel(MONDAY, tick=False):
        with db.transaction() as s:
            instance_id = messages.correlate(s, rt, name="retention_request_received", correlation_key=key,
                                             actor=Actor.system("counter"),
                                             payload={"channel": "counter", "account_status": {}, **C06}).id
        complete(db, rt, key, "accept", "s105", ACCEPT_TRANSFER)
        complete(db, rt, key, "retention_conversation", "s108", NOT_RETAINED)
    # The review comes after the transfer completes (days later, through the exchange's
    # return); the decision reads the case's variables, so give it the review's as well.
    with db.transaction() as s:
        data = {**instances.data_of(s, rt, s.get(ProcessInstance, instance_id)), **REVIEWED}
        shown = {}
        for username in ("s105", "s104", "s108", "s102", "s109", "s001"):
            reader = actor(s, username)
            instance = instances.get(s, instance_id, actor=reader)
            case = field_policy.screen_case(s, POLICY, actor=reader, instance=instance, data=data)
            shown[username] = [w.group for w in case.withheld]
    assert shown == {"s105": ["review_findings"], "s104": ["review_findings"], "s108": ["review_findings"],
                     "s102": [], "s109": [], "s001": []}


# -- lists and history --------------------------------------------------------------------------
@pytest.mark.sqlite
def test_a_list_shows_the_facts_a_reader_may_see_and_withholds_what_the_facts_cannot_decide(db, rt, demo_data):
    with time_machine.travel(MONDAY, tick=False):
        instance_id = conduct_callback(db, rt)

    def listed(username: str) -> field_policy.ScreenedCase:
        with db.transaction() as s:
            reader = actor(s, username)
            rows = instances.get_all(s, actor=reader, process_key="callback")
            [case] = field_policy.screen_cases(s, POLICY, actor=reader, instances=rows)
            assert case.instance.id == instance_id and case.data is None
            return case

    member, caller, compliance = listed("s108"), listed(CALLER), listed(HQ_COMPLIANCE)
    assert member.facts is not None and "exception_route" not in member.facts
    assert member.facts["service_satisfaction"] == 5
    assert [(w.group, w.fields) for w in member.withheld] == [("exceptions", ["exception_route"])]
    # "Their own call" is known without the variables (who completed the questionnaire).
    assert caller.withheld == [] and compliance.withheld == []
    assert caller.facts is not None and caller.facts["exception_route"] == "compliance"


def complaint_from_callback(db, rt, **details: Any) -> ProcessInstance:
    """C02's complaint raised on a callback by the other agent, with ``details`` added."""
    with time_machine.travel(MONDAY, tick=False), db.transaction() as s:
        return messages.correlate(s, rt, name="complaint_from_callback", correlation_key=None,
                                  actor=Actor.system(OTHER_AGENT),
                                  payload={"client_id": "C02", "branch_code": "HZ01", "channel": "callback",
                                           "request_kind": "complaint", "summary": "佣金多收",
                                           "first_contact_owner": OTHER_AGENT, **details})


def test_a_complaint_list_decides_from_the_report_facts_who_is_implicated(db, rt, demo_data):
    # The subject is a report fact, so a list can tell whether its reader is implicated:
    # compliance sees the narrative facts there, a colleague in the subject's group does not.
    complaint = complaint_from_callback(db, rt, alleged_violations=["suitability_mismatch"],
                                        subject_staff_ids=["s107"])

    def listed_facts(username: str) -> dict[str, Any] | None:
        with db.transaction() as s:
            reader = actor(s, username)
            [listed] = field_policy.screen_cases(s, POLICY, actor=reader,
                                                 instances=[s.get(ProcessInstance, complaint.id)])
        return listed.facts

    compliance = listed_facts(HQ_COMPLIANCE)
    assert compliance is not None and compliance["alleged_violations"] == ["suitability_mismatch"]
    colleague = listed_facts("s106")  # HZ01-G1, the group of the subject s107
    assert colleague is not None and "alleged_violations" not in colleague


def test_history_leaves_withheld_answers_out_of_each_event_except_the_readers_own_form(db, rt, demo_data):
    with time_machine.travel(MONDAY, tick=False):
        instance_id = conduct_callback(db, rt)

    def questionnaire_event(username: str) -> field_policy.ScreenedEvent:
        with db.transaction() as s:
            reader = actor(s, username)
            instance = instances.get(s, instance_id, actor=reader)
            events = field_policy.screen_history(s, POLICY, actor=reader, instance=instance,
                                                 data=instances.data_of(s, rt, instance),
                                                 events=instances.history(s, instance_id, actor=reader))
        [event] = [e for e in events if e.kind == "task.completed" and e.data["element_id"] == "questionnaire"]
        return event

    # HQ complaints reads every case but none of a callback's answers that led to no complaint.
    own, other, member = questionnaire_event(CALLER), questionnaire_event("s007"), questionnaire_event("s104")
    assert own.data["data"] == CONDUCT_ANSWERS and own.withheld == []
    assert other.data["data"] == {"recording_id": "REC-0001"}  # the only unrestricted answer
    assert {w.group for w in other.withheld} == {"summary", "answers", "staff_conduct"}
    assert member.data["data"] == {"recording_id": "REC-0001", "service_satisfaction": 5}
    assert other.data["element_id"] == "questionnaire" and other.actor == CALLER  # the event itself stays


def test_identifiers_in_case_data_are_masked_for_every_reader_compliance_included(db, rt, demo_data):
    # Brief §6.2: a phone, ID or account number typed into a form is masked like the registry's.
    complaint = complaint_from_callback(db, rt, complainant_phone="13900000421",
                                        contacts=[{"relative_id_number": "330106199001012315"}])
    page = screened(db, rt, HQ_COMPLIANCE, complaint.id)
    assert page is not None and page.data is not None
    assert page.data["complainant_phone"] == "139****0421"
    assert page.data["contacts"] == [{"relative_id_number": "3301**********2315"}]
    assert full_data(db, rt, complaint.id)["complainant_phone"] == "13900000421"  # stored as given


# -- the policy in the audit trail ----------------------------------------------------------
def _changes(db) -> list[dict[str, Any]]:
    with db.transaction() as s:
        return [e.data for e in s.execute(
            select(AuditEvent).where(AuditEvent.kind == field_policy.CHANGED).order_by(AuditEvent.seq)).scalars()]


@pytest.mark.sqlite
def test_the_policy_served_is_audited_once_then_again_only_with_what_changed(db, rt, tmp_path):
    shipped = PROJECT_ROOT / "workflows" / field_policy.DIRECTORY
    directory = tmp_path / field_policy.DIRECTORY
    shutil.copytree(shipped, directory)
    names = sorted(p.name for p in shipped.glob("*.json"))

    with db.transaction() as s:
        assert field_policy.record_change(s, field_policy.load_directory(directory), at=rt.now(),
                                          actor="system") is not None
    with db.transaction() as s:  # the next start, same files: nothing to record
        assert field_policy.record_change(s, field_policy.load_directory(directory), at=rt.now(),
                                          actor="system") is None
    (first,) = _changes(db)
    assert first["added"] == names and first["changed"] == first["removed"] == []
    assert first["files"] == {n: hashlib.sha256((shipped / n).read_bytes()).hexdigest() for n in names}
    assert first["content"] == {n: json.loads((shipped / n).read_text(encoding="utf-8")) for n in names}

    edited = json.loads((directory / "callback.json").read_text(encoding="utf-8"))
    edited["field_groups"]["summary"]["title"] = "满意度（修订）"
    (directory / "callback.json").write_text(json.dumps(edited, ensure_ascii=False), encoding="utf-8")
    (directory / "retention.json").unlink()
    with db.transaction() as s:
        event = field_policy.record_change(s, field_policy.load_directory(directory), at=rt.now(),
                                          actor="system")
        assert event is not None and event.actor == "system"
    second = _changes(db)[1]
    assert (second["added"], second["changed"], second["removed"]) == ([], ["callback.json"], ["retention.json"])
    assert second["content"] == {"callback.json": edited}
    assert sorted(second["files"]) == ["callback.json", "complaint.json"]
    with db.transaction() as s:
        assert audit.verify(s).broken == []


def test_the_serving_app_records_the_policy_it_starts_with_and_a_plain_app_does_not(settings, db, rt):
    from api import create_app

    create_app(settings, runtime=rt, database=db)
    assert _changes(db) == []
    create_app(settings, runtime=rt, database=db, record_policy=True)
    create_app(settings, runtime=rt, database=db, record_policy=True)  # a restart: unchanged
    (recorded,) = _changes(db)
    shipped = PROJECT_ROOT / "workflows" / field_policy.DIRECTORY
    assert recorded["added"] == sorted(p.name for p in shipped.glob("*.json"))
