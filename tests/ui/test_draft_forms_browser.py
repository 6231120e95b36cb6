"""The draft editor's form editor and lint while drawing, in Debian's chromium: an owner edits
a form's JSON Schema and sees the preview (rendered by the server with the task page's
template) follow the text, the renderer's refusal named, a sample's error summary, and saves
the form into the draft; and an unknown form key, an unknown candidate group and an
expression the safe evaluator refuses are marked on their elements while drawing, before any
Check. Both pages pass axe."""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from engine.process import deployments, drafts
from tests.ui.conftest import SCREENSHOTS, sign_in
from tests.ui.test_owners import _actor
from tests.ui.test_owners_browser import _field, _select

pytestmark = pytest.mark.usefixtures("quiet_page")


def _serious(page: Page) -> list[tuple[str, str, str]]:
    result = Axe().run(page)
    return [(v["id"], v["impact"], v["help"], [n["target"] for n in v["nodes"]][:5])
            for v in result.response["violations"] if v["impact"] in ("serious", "critical")]


# The preview waits for a pause in typing, then a round trip to the server, on a machine that
# may be busy: a step of the preview gets longer than Playwright's 5 s default.
SLOW = 15_000


def _shot(locator, name: str) -> None:
    """A picture of one part of the page: into var/screenshots, or into docs/images when
    scripts/owner_screenshots.py asks (BPM_DOCS_IMAGES), for docs/owners.md."""
    folder = Path(os.environ.get("BPM_DOCS_IMAGES") or SCREENSHOTS)
    folder.mkdir(parents=True, exist_ok=True)
    locator.screenshot(path=str(folder / f"{name}.png"), animations="disabled")


def _open_draft(page: Page, server: str) -> None:
    sign_in(page, server, "s001")
    page.goto(f"{server}/processes/complaint/draft")
    expect(page.locator("#modeler[data-ready='true'][data-lint-ready='true']")).to_be_attached()
    expect(page.locator("#draft-forms[data-ready='true']")).to_be_attached()


def test_an_owner_edits_a_form_with_a_live_preview_and_saves_it_into_the_draft(page: Page, server, db,
                                                                              demo_cases_loaded):
    _open_draft(page, server)
    with db.transaction() as s:
        schema = deployments.get_latest(s, "complaint").forms["complaint_acknowledge"]
    page.select_option("#form-choice", "complaint_acknowledge")
    text = page.locator("#form-text")
    expect(text).to_have_value(json.dumps(schema, ensure_ascii=False, indent=2) + "\n")
    preview = page.locator("#form-preview")
    first = next(iter(schema["properties"]))
    expect(preview.locator(f"#field-{first}")).to_be_visible()

    # The preview follows the text: a new title shows as the task page would show it.
    schema["properties"][first]["title"] = "新的标题 New title"
    text.fill(json.dumps(schema, ensure_ascii=False, indent=2))
    expect(preview.locator(f"#field-{first}")).to_contain_text("新的标题", timeout=SLOW)

    # What the renderer cannot show is named, by field and type.
    broken = {**schema, "properties": {**schema["properties"], "contacts": {"type": "array", "items": {
        "type": "object"}}}}
    text.fill(json.dumps(broken, ensure_ascii=False))
    expect(page.locator("#form-problems li[data-severity='error']")).to_contain_text("contacts", timeout=SLOW)
    expect(page.locator("#form-problems")).to_contain_text("不支持“object”的列表")

    # Back to a good form; an empty sample shows the task page's error summary.
    text.fill(json.dumps(schema, ensure_ascii=False, indent=2))
    expect(page.locator("#form-problems li[data-severity='error']")).to_have_count(0, timeout=SLOW)
    preview.locator("button[type=submit]").click()
    summary = preview.locator(".error-summary")
    expect(summary).to_be_visible(timeout=SLOW)
    expect(summary).to_be_focused()
    expect(summary.locator(f"a[href='#field-{schema['required'][0]}']")).to_be_visible()
    assert _serious(page) == []
    text.evaluate("area => { area.scrollTop = 0; }")
    _shot(page.locator(".forms-body"), "owner-form-editor")

    page.click("text=保存表单到草稿")
    expect(page.locator("#draft-forms[data-saved='complaint_acknowledge']")).to_be_attached()
    expect(page.locator("#modeler")).to_have_attribute("data-etag", '"1"')
    with db.transaction() as s:
        stored = drafts.get(s, "complaint", actor=_actor(s, "s001"))
        assert stored.revision == 1
        assert stored.forms["complaint_acknowledge"]["properties"][first]["title"] == "新的标题 New title"
        xml = stored.xml

    # A bundle with a script task is refused by name, and nothing changes.
    evil = xml.replace('<bpmn:startEvent id="start_received"', '<bpmn:scriptTask id="evil" scriptFormat="python">'
                       '<bpmn:script>import os</bpmn:script></bpmn:scriptTask><bpmn:startEvent id="start_received"', 1)
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("complaint.bpmn", evil)
    page.set_input_files("#import-file", files=[{"name": "complaint.zip", "mimeType": "application/zip",
                                                 "buffer": bundle.getvalue()}])
    page.click("text=导入到草稿")
    expect(page.locator("#draft-forms[data-imported='refused']")).to_be_attached()
    expect(page.locator("#import-problems")).to_contain_text("script tasks are not allowed")
    expect(page.locator("#import-message")).to_contain_text("未保存任何内容")
    assert _serious(page) == []
    _shot(page.locator("#draft-import"), "owner-import-refused")
    with db.transaction() as s:
        assert drafts.get(s, "complaint", actor=_actor(s, "s001")).revision == 1

    # A new form: a bad key is refused in words; a good one starts from a one-field form.
    page.fill("#new-form-key", "Extra Form")
    page.click("text=添加表单")
    expect(page.locator("#form-message")).to_contain_text("小写字母")
    page.fill("#new-form-key", "complaint_extra")
    page.click("text=添加表单")
    expect(page.locator("#form-choice")).to_have_value("complaint_extra")
    expect(preview.locator("#field-comment")).to_be_visible()
    # Switching away from an unsaved form asks first; saying no stays on it.
    asked = []
    page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
    page.select_option("#form-choice", "complaint_register")
    expect(page.locator("#form-choice")).to_have_value("complaint_extra")
    assert asked and "未保存" in asked[0]
    page.click("text=保存表单到草稿")
    expect(page.locator("#draft-forms[data-saved='complaint_extra']")).to_be_attached()
    expect(page.locator("#form-choice option[value='complaint_extra']")).to_have_count(1)
    with db.transaction() as s:
        stored = drafts.get(s, "complaint", actor=_actor(s, "s001"))
        assert stored.revision == 2 and stored.forms["complaint_extra"]["required"] == ["comment"]


def _lint_overlay(page: Page, element_id: str):
    return page.locator(f".djs-overlays[data-container-id='{element_id}'] .bjsl-overlay")


def test_lint_marks_problems_on_the_elements_while_drawing(page: Page, server, demo_cases_loaded):
    _open_draft(page, server)
    # The deployed diagram passes the engine's rules: nothing is marked.
    expect(page.locator("#modeler")).to_have_attribute("data-lint-issues", "0")
    expect(page.locator(".bjsl-overlay")).to_have_count(0)

    _select(page, "register")
    form_key = _field(page, "CamundaPlatform__Form", "formKey")
    form_key.fill("complaint_registr")
    form_key.press("Tab")
    expect(_lint_overlay(page, "register")).to_be_visible()
    expect(page.locator(".djs-overlays[data-container-id='register'] .bjsl-dropdown")).to_contain_text(
        "complaint_registr")

    _select(page, "acknowledge")
    groups = _field(page, "CamundaPlatform__UserAssignment", "candidateGroups")
    groups.fill("no_such_group")
    groups.press("Tab")
    expect(_lint_overlay(page, "acknowledge")).to_be_visible()
    expect(page.locator(".djs-overlays[data-container-id='acknowledge'] .bjsl-dropdown")).to_contain_text(
        "no_such_group", use_inner_text=False)

    # An expression only the server can judge: the lint asks it and marks the element.
    due = _field(page, "CamundaPlatform__UserAssignment", "dueDate")
    due.fill("${__import__('os')}")
    due.press("Tab")
    expect(page.locator(".djs-overlays[data-container-id='acknowledge'] .bjsl-dropdown")).to_contain_text(
        "__import__", use_inner_text=False)
    expect(page.locator("#modeler")).to_have_attribute("data-lint-issues", "2")
    assert _serious(page) == []
    # The server's Check finds the same problems; its list zooms to a step, for the picture.
    page.click("text=检查 Check")
    expect(page.locator("#modeler[data-checked='problems']")).to_be_attached()
    page.locator("#problems li[data-element-id='acknowledge'] button").first.click()
    canvas = page.locator("#canvas").bounding_box()  # drag the canvas to bring the step out from the palette
    page.mouse.move(canvas["x"] + 600, canvas["y"] + 500)
    page.mouse.down()
    page.mouse.move(canvas["x"] + 800, canvas["y"] + 560, steps=5)
    page.mouse.up()
    _shot(page.locator(".modeler-body"), "owner-draft-lint")

    # Fixing the form key clears its mark.
    _select(page, "register")
    form_key = _field(page, "CamundaPlatform__Form", "formKey")
    form_key.fill("complaint_register")
    form_key.press("Tab")
    expect(_lint_overlay(page, "register")).to_have_count(0)
