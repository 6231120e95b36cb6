"""A small process for access tests ("probe"): every kind of thing a person may be refused,
in one case that waits for all of them at once.

    start -> fork -> hold   (a step held by ``holder``, offered to ``handlers``)       -> join -> end
                  -> work   (offered to ``handlers``; recuses ``subject`` case-wide)  -> check -> join
                  -> wait   (receive task: message ``probe_ping``, by business key)   -> join
                  -> nap    (a timer, 30 days)                                        -> join

``check`` reads ``amount``: completing ``work`` without one fails the case (for retry and
data correction). Start data: ``handlers`` (candidate groups), ``holder`` (a username or
None), ``subject`` (a username or None), and a ``client_id``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from engine.access import identity
from engine.access.identity import Actor
from engine.db import Database
from engine.models import ACTIVE_TASK_STATES, ProcessInstance, Task, Timer, TimerStatus
from engine.process import deployments, instances, tasks
from engine.process.runtime import Runtime
from tests.support.bpmn import bundle_of, flow, process

KEY = "probe"
MESSAGE = "probe_ping"
HANDLERS = "probe_handlers"  # a group nobody but the test's handler belongs to

_RECUSAL = ('<bpmn:extensionElements><camunda:properties>'
            '<camunda:property name="excludeUsers" value="${subject}"/>'
            '<camunda:property name="recusalScope" value="case"/>'
            '</camunda:properties></bpmn:extensionElements>')

XML = process(
    '    <bpmn:startEvent id="start"/>\n'
    '    <bpmn:parallelGateway id="fork"/>\n'
    '    <bpmn:parallelGateway id="join"/>\n'
    '    <bpmn:userTask id="hold" name="经办 Hold" camunda:candidateGroups="${handlers}" '
    'camunda:assignee="${holder}" camunda:formKey="any"/>\n'
    f'    <bpmn:userTask id="work" name="调查 Work" camunda:candidateGroups="${{handlers}}" '
    f'camunda:formKey="any">{_RECUSAL}</bpmn:userTask>\n'
    '    <bpmn:exclusiveGateway id="check" default="f_check_join"/>\n'
    '    <bpmn:receiveTask id="wait" name="等待 Wait" messageRef="msg_ping"/>\n'
    '    <bpmn:intermediateCatchEvent id="nap" name="30天 Nap">'
    '<bpmn:timerEventDefinition><bpmn:timeDuration>P30D</bpmn:timeDuration></bpmn:timerEventDefinition>'
    '</bpmn:intermediateCatchEvent>\n'
    '    <bpmn:endEvent id="end"/>\n'
    + flow("start", "fork")
    + flow("fork", "hold") + flow("hold", "join")
    + flow("fork", "work") + flow("work", "check")
    + flow("check", "join", condition="${amount &gt; 0}", flow_id="f_check_amount")
    + flow("check", "join", flow_id="f_check_join")
    + flow("fork", "wait") + flow("wait", "join")
    + flow("fork", "nap") + flow("nap", "join")
    + flow("join", "end"),
    key=KEY, name="访问探针 Access probe", extra=f'  <bpmn:message id="msg_ping" name="{MESSAGE}"/>\n')


def deploy(db: Database, rt: Runtime) -> None:
    with db.transaction() as s:
        identity.ensure_group(s, key=HANDLERS, name="探针经办 Probe handlers")
        deployments.deploy(s, rt, bundle_of(XML), actor=Actor.system("owner"))


def start(db: Database, rt: Runtime, key: str, client_id: str | None, *, holder: str | None = None,
          subject: str | None = None, actor: Actor | None = None, **data: Any) -> int:
    with db.transaction() as s:
        return instances.start(s, rt, process_key=KEY, business_key=key, actor=actor or Actor.system("intake"),
                               data={"client_id": client_id, "handlers": [HANDLERS], "holder": holder,
                                     "subject": subject, **data}).id


def open_task(db: Database, instance_id: int, element: str) -> Task:
    with db.transaction() as s:
        return s.execute(select(Task).where(Task.instance_id == instance_id, Task.element_id == element,
                                            Task.status.in_(ACTIVE_TASK_STATES))).scalar_one()


def timer_of(db: Database, instance_id: int) -> Timer:
    with db.transaction() as s:
        return s.execute(select(Timer).where(Timer.instance_id == instance_id, Timer.element_id == "nap",
                                             Timer.status == TimerStatus.WAITING)).scalar_one()


def fail(db: Database, rt: Runtime, instance_id: int, by: Actor) -> None:
    """Complete ``work`` without an ``amount``: ``check`` cannot decide and the case fails."""
    work = open_task(db, instance_id, "work")
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=work.id, actor=by, data={})
    with db.transaction() as s:
        instance = s.get(ProcessInstance, instance_id)
        assert instance is not None and instance.status == "failed", instance and instance.error
