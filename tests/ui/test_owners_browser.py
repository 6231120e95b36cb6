"""The draft editor in Debian's chromium: a process owner changes a step's candidate group in
the Camunda 7 properties panel, Check marks an unknown form key on its element, the owner
fixes it and deploys version 2; the list and the editor pass axe."""

from __future__ import annotations

import re

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect
from sqlalchemy import select

from engine.models import ProcessVersion
from tests.ui.conftest import screenshot, sign_in

pytestmark = pytest.mark.usefixtures("quiet_page")


def _serious(page: Page) -> list[tuple[str, str, str]]:
    result = Axe().run(page)
    return [(v["id"], v["impact"], v["help"]) for v in result.response["violations"]
            if v["impact"] in ("serious", "critical")]


def _select(page: Page, element_id: str) -> None:
    # The step sits under the palette when the diagram fits the canvas: a click on the
    # element itself, as a pointer's would reach it once scrolled into view.
    page.locator(f"g.djs-element[data-element-id='{element_id}'] .djs-hit").first.dispatch_event("click")
    expect(page.locator("#bio-properties-panel-id")).to_have_value(element_id)


def _field(page: Page, group: str, entry: str):
    """A properties-panel input, opening its group first if it is closed."""
    field = page.locator(f"#bio-properties-panel-{entry}")
    if not field.is_visible():
        page.locator(f"[data-group-id='group-{group}'] .bio-properties-panel-group-header").click()
    expect(field).to_be_visible()
    return field


def test_an_owner_edits_checks_fixes_and_deploys_a_draft_in_the_browser(page: Page, server, db,
                                                                        demo_cases_loaded):
    sign_in(page, server, "s001")
    page.click("header >> text=流程管理")
    expect(page.locator("tr[data-process='complaint']")).to_be_visible()
    assert _serious(page) == []
    page.locator("tr[data-process='complaint'] >> text=编辑草稿").click()
    editor = page.locator("#modeler[data-ready='true']")
    expect(editor).to_be_visible()
    expect(page.locator(".djs-palette")).to_be_visible()

    _select(page, "register")
    groups = _field(page, "CamundaPlatform__UserAssignment", "candidateGroups")
    groups.fill("call_center_agent")
    form_key = _field(page, "CamundaPlatform__Form", "formKey")
    form_key.fill("complaint_registr")
    form_key.press("Tab")
    expect(page.locator("#draft-state")).to_have_text("有未保存的修改")

    page.click("text=检查 Check")
    expect(page.locator("#modeler[data-checked='problems']")).to_be_attached()
    expect(page.locator(".bpm-lint-badge[data-lint-for='register']")).to_be_visible()
    expect(page.locator("g.djs-element[data-element-id='register']")).to_have_class(re.compile("bpm-lint-error"))
    expect(page.locator("#problems li[data-element-id='register']")).to_contain_text("complaint_registr")
    assert _serious(page) == []

    page.locator("#problems li[data-element-id='register'] button").click()  # the problem selects its step
    expect(page.locator("#bio-properties-panel-id")).to_have_value("register")
    screenshot(page, "owner-draft-check")
    form_key = _field(page, "CamundaPlatform__Form", "formKey")
    form_key.fill("complaint_register")
    form_key.press("Tab")
    page.click("text=检查 Check")
    expect(page.locator("#modeler[data-checked='ok']")).to_be_attached()
    expect(page.locator(".bpm-lint-badge")).to_have_count(0)

    page.click("text=部署为版本 2")  # saves the draft, then deploys it
    expect(page.locator("#modeler[data-deployed='2']")).to_be_attached()
    expect(page.locator("#draft-message")).to_contain_text("已部署为版本 2")
    with db.transaction() as s:
        v2 = s.execute(select(ProcessVersion).where(ProcessVersion.process_key == "complaint",
                                                    ProcessVersion.version == 2)).scalar_one()
        assert 'camunda:candidateGroups="call_center_agent"' in v2.bpmn_xml
        assert 'camunda:formKey="complaint_register"' in v2.bpmn_xml


def test_a_second_owners_stale_save_gets_the_conflict_and_overwrites_nothing(page: Page, browser, server, db,
                                                                            demo_cases_loaded):
    """Two owners open the complaint's draft; s102 saves first, so s001's save, made on the
    revision they opened, is refused with who saved and when; s102's change stays."""
    from engine.models import ProcessDraft

    draft = f"{server}/processes/complaint/draft"
    sign_in(page, server, "s001")
    page.goto(draft)
    expect(page.locator("#modeler[data-ready='true']")).to_be_visible()
    other_context = browser.new_context(locale="zh-CN", timezone_id="Asia/Shanghai",
                                        viewport={"width": 1280, "height": 800})
    other = other_context.new_page()
    try:
        sign_in(other, server, "s102")
        other.goto(draft)
        expect(other.locator("#modeler[data-ready='true']")).to_be_visible()
        _select(other, "register")
        _field(other, "CamundaPlatform__UserAssignment", "candidateGroups").fill("call_center_agent")
        other.click("button[data-action='save']")
        expect(other.locator("#draft-state")).not_to_have_text("有未保存的修改")
    finally:
        other_context.close()

    _select(page, "register")
    _field(page, "CamundaPlatform__UserAssignment", "candidateGroups").fill("hq_complaint_dept")
    page.click("button[data-action='save']")
    message = page.locator("#draft-message")
    expect(message).to_contain_text("s102")
    expect(message).to_have_class(re.compile("flash-warning"))
    assert _serious(page) == []
    with db.transaction() as s:
        stored = s.get(ProcessDraft, "complaint")
        assert stored is not None and stored.saved_by == "s102"
        assert 'camunda:candidateGroups="call_center_agent"' in stored.bpmn_xml
        assert "hq_complaint_dept" not in stored.bpmn_xml.split('id="register"')[1].split(">")[0]


def test_an_owner_rolls_version_2_back_to_version_1_and_new_cases_start_on_its_diagram(page: Page, server, db,
                                                                                      rt, demo_cases_loaded):
    from engine.process import deployments
    from tests.ui.test_owners import _start_complaint
    from tests.ui.test_owners_rollback import deploy_version_2

    _, _, v1_groups = _start_complaint(db, rt, "CMP-20261125-0911")
    deploy_version_2(db, rt)
    sign_in(page, server, "s001")
    page.goto(f"{server}/processes/complaint")
    expect(page.locator("tr[data-version='2'] [data-redeploy]")).to_have_count(0)  # the latest
    page.locator("tr[data-version='1'] [data-redeploy]").click()
    expect(page.locator("h1")).to_contain_text("重新部署版本 1")
    expect(page.locator("#version-changes li[data-element-id='register']")).to_contain_text("hq_complaint_dept")
    expect(page.locator("#redeploy-ok")).to_be_visible()
    assert _serious(page) == []
    page.fill("#redeploy-reason", "总部集中登记试行结束，恢复营业部登记")
    screenshot(page, "owner-rollback")
    page.click("button:has-text('重新部署版本 1')")
    page.wait_for_url(f"{server}/processes/complaint")
    expect(page.locator(".flash")).to_contain_text("版本 1 已重新部署为版本 3")
    expect(page.locator("tr[data-version='3']")).to_contain_text("版本 1 的重新部署")
    assert _serious(page) == []

    version_id, _, groups = _start_complaint(db, rt, "CMP-20261125-0912")
    with db.transaction() as s:
        assert version_id == deployments.get_version(s, "complaint", 3).id
    assert groups == v1_groups and groups != ["hq_complaint_dept"]
