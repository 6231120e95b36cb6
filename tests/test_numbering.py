"""Case numbers from a process's businessKeyFormat (CMP-20250612-0001), and cases started
for a registered client taking the registry's branch and service group."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest
import time_machine
from sqlalchemy import select

from engine.calendars import SHANGHAI
from engine.errors import DeploymentRejected, InvalidInput
from engine.models import ProcessInstance
from engine.numbering import check_format
from engine.process import deployments, instances, messages
from tests.support.bpmn import bundle_of, linear, process, user_task

pytestmark = pytest.mark.sqlite


def _numbered(key: str, fmt: str, *, start: str = '    <bpmn:startEvent id="start"/>\n', extra: str = "") -> str:
    props = (f'    <bpmn:extensionElements><camunda:properties><camunda:property name="businessKeyFormat" '
             f'value="{fmt}"/></camunda:properties></bpmn:extensionElements>\n')
    body = linear(("work", user_task("work")))
    return process(props + body.replace('    <bpmn:startEvent id="start"/>\n', start), key=key, extra=extra)


def _deploy(db, rt, people, xml):
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(xml), actor=people.owner)


def _start(db, rt, actor, key, **kwargs):
    with db.transaction() as s:
        return instances.start(s, rt, process_key=key, business_key=None, actor=actor, **kwargs).business_key


def test_cases_are_numbered_per_day_in_shanghai_time(db, rt, people):
    _deploy(db, rt, people, _numbered("complaint", "CMP-{yyyymmdd}-{seq:4}"))
    with time_machine.travel(datetime(2025, 6, 12, 9, 0, tzinfo=SHANGHAI), tick=False):
        first = [_start(db, rt, people.clerk, "complaint") for _ in range(3)]
    # 23:30 UTC on the 12th is already the 13th in Shanghai: a new day, a new count.
    with time_machine.travel(datetime(2025, 6, 13, 7, 30, tzinfo=SHANGHAI), tick=False):
        second = _start(db, rt, people.clerk, "complaint")
    assert first == ["CMP-20250612-0001", "CMP-20250612-0002", "CMP-20250612-0003"]
    assert second == "CMP-20250613-0001"


def test_a_format_with_the_branch_counts_per_branch(db, rt, people):
    _deploy(db, rt, people, _numbered("retention", "RET-{branch}-{yyyy}-{seq:3}"))
    with time_machine.travel(datetime(2025, 6, 16, 10, 0, tzinfo=SHANGHAI), tick=False):
        keys = [_start(db, rt, people.clerk, "retention", branch_code=branch) for branch in ("HZ01", "NB01", "HZ01")]
    assert keys == ["RET-HZ01-2025-001", "RET-NB01-2025-001", "RET-HZ01-2025-002"]
    with pytest.raises(InvalidInput, match="branch_code"):
        _start(db, rt, people.clerk, "retention")


def test_a_rolled_back_start_gives_its_number_back(db, rt, people):
    _deploy(db, rt, people, _numbered("callback", "CB-{yyyymmdd}-{seq:4}"))
    with time_machine.travel(datetime(2025, 6, 16, 10, 0, tzinfo=SHANGHAI), tick=False):
        with pytest.raises(RuntimeError), db.transaction() as s:
            instances.start(s, rt, process_key="callback", business_key=None, actor=people.clerk)
            raise RuntimeError("the caller's transaction fails after the start")
        assert _start(db, rt, people.clerk, "callback") == "CB-20250616-0001"


def test_a_process_without_a_format_still_needs_a_business_key(db, rt, people):
    _deploy(db, rt, people, process(linear(("work", user_task("work"))), key="plain"))
    with pytest.raises(InvalidInput, match="businessKeyFormat"):
        _start(db, rt, people.clerk, "plain")


def test_a_message_without_a_key_starts_a_numbered_case(db, rt, people):
    start = ('    <bpmn:startEvent id="start"><bpmn:messageEventDefinition messageRef="m"/></bpmn:startEvent>\n')
    _deploy(db, rt, people, _numbered("complaint", "CMP-{yyyymmdd}-{seq:4}", start=start,
                                      extra='  <bpmn:message id="m" name="complaint_received"/>\n'))
    with time_machine.travel(datetime(2025, 6, 12, 9, 0, tzinfo=SHANGHAI), tick=False), db.transaction() as s:
        inst = messages.correlate(s, rt, name="complaint_received", correlation_key=None, actor=people.system,
                                  payload={"channel": "12386"})
        assert inst.business_key == "CMP-20250612-0001"


@pytest.mark.parametrize("fmt", ["CMP-{yyyymmdd}", "CMP-{seq}-{seq}", "CMP-{date}-{seq}", "CMP-{seq"])
def test_deploy_refuses_an_unusable_format(db, rt, people, fmt):
    assert check_format(fmt) is not None
    with pytest.raises(DeploymentRejected, match="businessKeyFormat"), db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(_numbered("bad", fmt)), actor=people.owner)


def test_concurrent_starts_never_share_a_number(db, rt, people):
    _deploy(db, rt, people, _numbered("complaint", "CMP-{yyyymmdd}-{seq:4}"))
    barrier = threading.Barrier(4)
    keys: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(5):
                keys.append(_start(db, rt, people.clerk, "complaint"))
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    numbers = sorted(int(k.rsplit("-", 1)[1]) for k in keys)
    assert numbers == list(range(1, 21))


def test_a_case_for_a_registered_client_starts_with_the_registrys_branch_and_group(db, rt, people):
    from engine.brokerage import demo

    with db.transaction() as s:
        demo.load(s, rt)
    _deploy(db, rt, people, process(linear(("work", user_task("work", groups="client:service_group"))),
                                    key="contact"))
    with db.transaction() as s:
        inst = instances.start(s, rt, process_key="contact", business_key="K-1", actor=people.system,
                               data={"client_id": "C06"})
        data = instances.data_of(s, rt, inst)
        row = s.execute(select(ProcessInstance).where(ProcessInstance.id == inst.id)).scalar_one()
    # Brief §4.4: C06 周晓燕 belongs to HZ01, group HZ01-G2. No identifier is copied.
    assert (row.client_id, row.branch_code) == ("C06", "HZ01")
    assert data["service_group"] == "HZ01-G2"
    assert not {"id_number", "phone", "account_number"} & set(data)
