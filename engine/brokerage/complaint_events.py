"""What a complaint's automatic steps do to people and to other cases (docs/processes.md,
complaint): the diagram's service tasks decide (``engine.brokerage.services.complaint``),
this module delivers, with the database at hand.

- 知会合规 (C4, major / group / regulator-transferred cases): compliance is told by a
  notification: the case's branch's compliance officer and headquarters compliance (the
  engine's branch-bound ``compliance`` group), recused staff left out.
- 客户来电催办: the current handlers (the assignee of each open step, or its candidates while
  nobody holds it) and the first-contact owner are told; from the second chase the open steps'
  priority is raised and the branch's 客服总监 is told as well.
- 客户补充材料: the investigator (whoever holds or did 调查核实) is told.
- The client took the matter to 12386: the whole-case deadline becomes the regulator-
  transferred one, min(30 WD, regulator due − 2 WD) from arrival, as a 12386 start's.
- C5 retries exhausted: an SMS to the client goes to the outbox (channel ``sms``); the phone
  is looked up only when it is sent, and every log and audit line shows it masked.
- Group complaints (C2): before classification, complaints on the same matter within
  ``complaint.group_window_wd`` working days are counted and linked
  (:func:`before_classification`).

Each notice is one language per recipient (Chinese unless they chose English) with times in
Beijing time, and is recorded in the case history (``case.notified``).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from engine.access.masking import mask_phone
from engine.audit import record_instance_event
from engine.brokerage import figures
from engine.calendars import SHANGHAI
from engine.models import ACTIVE_TASK_STATES, Client, InstanceStatus, Notification, ProcessInstance, Task, TaskKind
from engine.process.runtime import Runtime
from engine.sla import calendar_store, case_clock
from engine.sla.milestones import languages, members

PROCESS = "complaint"
SMS_CHANNEL = "sms"
# Priority an open step of a case chased twice or more is raised to (the inbox sorts on it).
CHASED_PRIORITY = 80
CLASSIFICATION = "classify"


# -- notices to staff ------------------------------------------------------------------------
def notify(session: Session, rt: Runtime, instance: ProcessInstance, usernames: list[str], *, reason: str,
           zh: tuple[str, str], en: tuple[str, str]) -> list[str]:
    """Write one notification per recipient in their language and record who was told; returns
    the recipients (each once, in order)."""
    recipients = list(dict.fromkeys(u for u in usernames if u))
    now = rt.now()
    for username, language in languages(session, recipients).items():
        subject, body = en if language == "en" else zh
        session.add(Notification(channel="default", recipient=username, subject=f"[{instance.business_key}] {subject}",
                                 body=body, instance_id=instance.id, task_id=None, created_at=now, attempts=0))
    record_instance_event(session, instance, kind="case.notified", actor="system", at=now,
                          data={"reason": reason, "recipients": recipients})
    return recipients


def _recused(data: dict[str, Any]) -> set[str]:
    return {str(u) for u in (data.get("subject_staff_ids") or [])}


def _open_steps(session: Session, instance: ProcessInstance) -> list[Task]:
    return list(session.execute(select(Task).where(
        Task.instance_id == instance.id, Task.kind == TaskKind.BPMN, Task.status.in_(ACTIVE_TASK_STATES))
        .order_by(Task.id)).scalars())


def _holders(session: Session, task: Task) -> list[str]:
    """Who works on a step: its assignee, else the candidates it is offered to (recused left out)."""
    if task.assignee:
        return [task.assignee]
    excluded = set(task.excluded or [])
    return [u for u in members(session, list(task.candidate_groups or []), task) if f"user:{u}" not in excluded]


def _when(value: Any) -> str:
    """A moment as people read it: Beijing time, to the minute."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if isinstance(value, datetime) and value.tzinfo is not None:
        return f"{value.astimezone(SHANGHAI):%Y-%m-%d %H:%M}"
    return str(value or "")


# -- the hooks ---------------------------------------------------------------------------------
def on_engine_task_ran(session: Session, rt: Runtime, instance: ProcessInstance, spiff_task: Any) -> None:
    if instance.process_key != PROCESS:
        return
    handler = _HANDLERS.get(getattr(spiff_task.task_spec, "bpmn_id", None) or "")
    if handler is not None:
        handler(session, rt, instance, dict(spiff_task.data))


def _compliance_notice(session: Session, rt: Runtime, instance: ProcessInstance, data: dict[str, Any]) -> None:
    severity = str(data.get("severity") or "")
    names = {"major": ("重大投诉", "major complaint"), "group": ("群体投诉", "group complaint"),
             "regulator": ("监管转办投诉", "regulator-transferred complaint")}
    zh_kind, en_kind = names.get(severity, ("投诉", "complaint"))
    recused = _recused(data)
    people = [u for u in members(session, ["compliance"], instance) if u not in recused]
    notify(session, rt, instance, people, reason=f"compliance:{severity}",
           zh=(f"{zh_kind}请合规关注",
               f"案件 {instance.business_key} 为{zh_kind}，请合规关注（分类时间 {_when(rt.now())}，北京时间）。"),
           en=(f"{en_kind}: compliance to follow", f"Case {instance.business_key} is a {en_kind}; compliance to "
               f"follow (classified {_when(rt.now())} Beijing time)."))


def _chased(session: Session, rt: Runtime, instance: ProcessInstance, data: dict[str, Any]) -> None:
    count = int(data.get("chase_count") or 1)
    steps = _open_steps(session, instance)
    people = [u for step in steps for u in _holders(session, step)]
    owner = data.get("first_contact_owner")
    if owner:
        people.append(str(owner))
    if count >= 2:
        # The second chase: the case goes up the worklists and the branch's 客服总监 hears of it.
        session.execute(update(Task).where(Task.id.in_([s.id for s in steps]), Task.priority < CHASED_PRIORITY)
                        .values(priority=CHASED_PRIORITY))
        branch = instance.branch_code
        people += members(session, [f"{branch}:branch_cs_director" if branch else "branch_cs_director"], instance)
    recused = _recused(data)
    people = [u for u in people if u not in recused]
    at = _when(data.get("inbound_contact_at"))
    summary = str(data.get("chase_summary") or "")
    notify(session, rt, instance, people, reason=f"chase:{count}",
           zh=(f"客户第 {count} 次来电催办", f"客户于 {at}（北京时间）第 {count} 次来电催办：{summary}"),
           en=(f"the client chased (#{count})",
               f"The client chased the case at {at} Beijing time (#{count}): {summary}"))


def _evidence(session: Session, rt: Runtime, instance: ProcessInstance, data: dict[str, Any]) -> None:
    investigation = [s for s in _open_steps(session, instance) if s.element_id == "investigate"]
    people = [u for step in investigation for u in _holders(session, step)]
    if not people:
        # The investigation is done: whoever did it (read from the step, as this branch's copy
        # of the case data may predate it).
        people = [u for u in session.execute(select(Task.completed_by).where(
            Task.instance_id == instance.id, Task.element_id == "investigate", Task.completed_by.is_not(None))
            .order_by(Task.completed_at.desc()).limit(1)).scalars() if u]
    recused = _recused(data)
    people = [u for u in people if u not in recused]
    ref, what = str(data.get("evidence_ref") or ""), str(data.get("evidence_description") or "")
    received = _when(data.get("evidence_received_at") or rt.now())
    notify(session, rt, instance, people, reason="new_evidence",
           zh=("客户补充了材料", f"客户补充了材料 {ref}：{what}（收到时间 {received}，北京时间）"),
           en=("the client sent new evidence", f"The client sent new evidence {ref}: {what} (received {received} "
               "Beijing time)."))


def _escalated(session: Session, rt: Runtime, instance: ProcessInstance, data: dict[str, Any]) -> None:
    """The deadline a 12386 start would have had, from the case's arrival."""
    clock = case_clock.get(session, instance.id)
    config = figures.load_config(session)
    calendar = calendar_store.CALENDARS.get(session, config.business_hours)
    facts = {"severity": "regulator", "regulator_due_at": data.get("regulator_due_at")}
    regulator_due = facts["regulator_due_at"]
    if isinstance(regulator_due, str) and len(regulator_due.strip()) == 10:
        facts["regulator_due_at"] = calendar.close_of_working_day(date.fromisoformat(regulator_due.strip())).isoformat()
    due = figures.resolution_due(calendar, config, instance.started_at, facts)
    _compliance_notice(session, rt, instance, {**data, "severity": "regulator"})
    if due is None:
        return
    if clock is None:
        from engine.brokerage.complaint_clock import POLICY

        case_clock.start(session, rt, instance=instance, policy=POLICY, started_at=instance.started_at, due_at=due,
                         milestones=case_clock.policy_milestones(session, POLICY), now=rt.now())
        return
    case_clock.retarget(session, rt, instance=instance, clock=clock, due_at=due,
                        reason=f"regulator_transfer:{data.get('regulator_ref')}", actor="system", now=rt.now())


def _contact_sms(session: Session, rt: Runtime, instance: ProcessInstance, data: dict[str, Any]) -> None:
    """The SMS after the retries: to the client's phone in the registry, or to the number the
    walk-in complainant gave. The body says when the complaint came in and how to call back;
    it never carries the number itself."""
    client_id = instance.client_id or data.get("client_id")
    phone = None
    if client_id:
        client = session.get(Client, str(client_id))
        phone = client.phone if client is not None else None
    recipient = f"client:{client_id}" if client_id and phone else None
    if recipient is None and data.get("complainant_phone"):
        phone, recipient = str(data["complainant_phone"]), f"phone:{data['complainant_phone']}"
    now = rt.now()
    if recipient is None:
        record_instance_event(session, instance, kind="client.sms_not_sent", actor="system", at=now,
                              data={"reason": "no phone number on record"})
        return
    received = _when(data.get("received_at") or instance.started_at)
    attempts = "、".join(_when(f.get("contact_at")) for f in data.get("contact_failures") or [] if f.get("contact_at"))
    body = (f"尊敬的客户：您于 {received}（北京时间）反映的问题已受理，案件编号 {instance.business_key}。"
            f"我们于 {attempts or _when(now)} 多次致电未能联系上您，请在工作日营业时间回电客服热线，"
            "或回复本短信告知方便联系的时间。")
    session.add(Notification(channel=SMS_CHANNEL, recipient=recipient, subject="投诉受理联系短信", body=body,
                             instance_id=instance.id, task_id=None, created_at=now, attempts=0))
    record_instance_event(session, instance, kind="client.sms_queued", actor="system", at=now,
                          data={"to": mask_phone(phone), "reason": "contact_unreachable",
                                "attempts": int(data.get("contact_attempts") or 0)})


_HANDLERS = {
    "notify_compliance": _compliance_notice,
    "record_chase": _chased,
    "add_evidence": _evidence,
    "reclassify_regulator": _escalated,
    "send_contact_sms": _contact_sms,
}


# -- group complaints -------------------------------------------------------------------------
def matter_of(data: dict[str, Any], branch: str | None) -> str | None:
    """"The same matter" (docs/processes.md): the registrar's matter key (事项标识, e.g. a
    product code or an outage's reference) when the register form gives one, compared within
    the firm; else the staff member complained about in the same business line, compared
    within the case's branch. A complaint naming neither counts for no matter: telling two
    unrelated complaints about, say, fees apart needs a person, not a rule."""
    key = str(data.get("matter_key") or "").strip()
    if key:
        return f"key:{key}"
    subjects = sorted(str(s) for s in data.get("subject_staff_ids") or [])
    if subjects and data.get("business_line"):
        return f"staff:{branch}:{data['business_line']}:{','.join(subjects)}"
    return None


def before_classification(session: Session, rt: Runtime, instance: ProcessInstance, spiff_task: Any) -> None:
    """As 分类分级 (C2) is about to run, whichever way the complaint came in (registered at the
    counter or the call centre, transferred by 12386, raised on a callback): count the
    complaints on the same matter received within ``complaint.group_window_wd`` working days
    (this one included) and link them; at ``group_threshold`` the case classifies as a group
    complaint. The earlier cases record the link in their history."""
    if instance.process_key != PROCESS or getattr(spiff_task.task_spec, "bpmn_id", None) != CLASSIFICATION:
        return
    data = spiff_task.data
    if data.get("request_kind") not in (None, "complaint"):
        return
    matter = matter_of(data, instance.branch_code)
    if matter is None:
        return
    from engine.brokerage import settings

    window = int(settings.case_values(data, "complaint.")["group_window_wd"])
    config = figures.load_config(session)
    calendar = calendar_store.CALENDARS.get(session, config.business_hours)
    since = _working_days_back(calendar, rt.now(), window)
    candidates = session.execute(select(ProcessInstance).where(
        ProcessInstance.process_key == PROCESS, ProcessInstance.id != instance.id,
        ProcessInstance.started_at >= since,
        ProcessInstance.status.in_((InstanceStatus.RUNNING, InstanceStatus.COMPLETED)))
        .order_by(ProcessInstance.started_at)).scalars().all()
    related = [c for c in candidates
               if (c.facts or {}).get("request_kind") in (None, "complaint")
               and matter_of(c.facts or {}, c.branch_code) == matter]
    data["matter"] = matter
    data["same_matter_count"] = len(related) + 1
    data["same_matter_cases"] = [c.business_key for c in related]
    now = rt.now()
    for earlier in related:
        record_instance_event(session, earlier, kind="complaint.same_matter_linked", actor="system", at=now,
                              data={"case": instance.business_key, "matter": matter, "count": len(related) + 1})


def _working_days_back(calendar: Any, moment: datetime, days: int) -> datetime:
    """The start (00:00 Beijing) of the ``days``-th working day back, counting the moment's own
    day as the first: a window of ``days`` working days that ends now."""
    from datetime import time, timedelta

    day = moment.astimezone(SHANGHAI).date()
    counted = 0
    for _ in range(3660):
        info, _known = calendar.day(day)
        if info.working:
            counted += 1
            if counted >= days:
                break
        day -= timedelta(days=1)
    return datetime.combine(day, time.min, SHANGHAI)
