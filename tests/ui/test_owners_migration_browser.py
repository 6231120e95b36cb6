"""Moving running cases in Debian's chromium: a process owner changes a step's candidate group
in the draft, compares the canvas with version 1 (the step is marked on the canvas and the
change listed in words), deploys version 2, dry-runs the migration of two running cases
(both can move), moves one, and that case continues on version 2 while the other stays on
version 1. axe on the editor with the comparison, the migration page and its report."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select

from engine.models import InstanceStatus, ProcessInstance, ProcessVersion, Task
from engine.process import tasks
from tests.ui.conftest import screenshot, sign_in
from tests.ui.test_owners import _actor, _register_data, _start_complaint
from tests.ui.test_owners_browser import _field, _select, _serious

pytestmark = pytest.mark.usefixtures("quiet_page")


def _case(db, business_key):
    with db.transaction() as s:
        instance = s.execute(select(ProcessInstance).where(ProcessInstance.business_key == business_key)).scalar_one()
        return instance.id, s.get(ProcessVersion, instance.process_version_id).version


def test_an_owner_deploys_v2_dry_runs_and_moves_a_case_that_then_continues_on_v2(page: Page, server, db, rt,
                                                                                 demo_cases_loaded):
    moving, staying = "CMP-20261125-0921", "CMP-20261125-0922"
    _start_complaint(db, rt, moving)
    _start_complaint(db, rt, staying)
    moving_id, _ = _case(db, moving)
    staying_id, _ = _case(db, staying)

    sign_in(page, server, "s001")
    page.click("header >> text=流程管理")
    page.locator("tr[data-process='complaint'] >> text=编辑草稿").click()
    expect(page.locator("#modeler[data-ready='true']")).to_be_visible()
    _select(page, "register")
    groups = _field(page, "CamundaPlatform__UserAssignment", "candidateGroups")
    groups.fill("call_center_agent")
    groups.press("Tab")

    page.click("text=与版本 1 比较")
    expect(page.locator("#modeler[data-diffed='1']")).to_be_attached()
    expect(page.locator(".bpm-diff-badge[data-diff-for='register']")).to_have_text("已修改")
    expect(page.locator("g.djs-element[data-element-id='register']")).to_have_class(re.compile("bpm-diff-changed"))
    expect(page.locator("#diff-list li[data-element-id='register']")).to_contain_text(
        "候选组：call_center_agent,branch:counter_staff → call_center_agent")
    expect(page.locator("#diff-summary")).to_contain_text("与版本 1 相比")
    assert _serious(page) == []
    screenshot(page, "owner-draft-diff")

    page.click("text=部署为版本 2")
    expect(page.locator("#modeler[data-deployed='2']")).to_be_attached()

    page.goto(f"{server}/processes/complaint")
    page.click("text=迁移运行中的案件")
    expect(page.locator("h1")).to_contain_text("迁移到其他版本")
    expect(page.locator("#version-changes li[data-element-id='register']")).to_contain_text("候选组")
    assert _serious(page) == []
    page.check(f"#case-{moving_id}")
    page.check(f"#case-{staying_id}")
    page.click("button:has-text('试运行')")
    expect(page.locator("#report[data-dry-run='true']")).to_be_visible()
    for case_id in (moving_id, staying_id):
        expect(page.locator(f"tr[data-outcome='{case_id}'][data-result='movable']")).to_contain_text("可以迁移")
    expect(page.locator(f"tr[data-outcome='{moving_id}']")).to_contain_text("候选组")
    assert _serious(page) == []
    assert _case(db, moving)[1] == 1  # the dry run stored nothing

    page.uncheck(f"#case-{staying_id}")
    page.click("button:has-text('将所选案件迁移到版本 2')")
    expect(page.locator("#report[data-dry-run='false']")).to_be_visible()
    expect(page.locator(f"tr[data-outcome='{moving_id}'][data-result='moved']")).to_contain_text("已迁移")
    expect(page.locator("#report [role='status']")).to_contain_text("1 个已迁移")
    expect(page.locator(f"tr[data-case='{staying}']")).to_be_visible()  # still to move
    expect(page.locator(f"tr[data-case='{moving}']")).to_have_count(0)
    assert _serious(page) == []
    screenshot(page, "owner-migration")
    assert (_case(db, moving)[1], _case(db, staying)[1]) == (2, 1)

    with db.transaction() as s:  # the moved case goes on along version 2: a call-centre agent registers it
        register = s.execute(select(Task).where(Task.instance_id == moving_id, Task.element_id == "register")) \
            .scalar_one()
        assert register.candidate_groups == ["call_center_agent"]
        tasks.complete(s, rt, task_id=register.id, actor=_actor(s, "s004"), data=_register_data())
        assert s.get(ProcessInstance, moving_id).status == InstanceStatus.RUNNING
        assert s.execute(select(Task.element_id).where(Task.instance_id == moving_id, Task.status.in_(
            ("open", "claimed")))).scalars().all() == ["acknowledge"]
    assert _case(db, moving)[1] == 2
