"""The worklist pages as their users work them, in Debian's chromium: a day's work from
sign-in to the next step, what a supervisor sees, what a recused person cannot find, CSRF,
language, a phone's screen, and no serious accessibility violation on any page."""

from __future__ import annotations

import re

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from tests.ui.conftest import screenshot, sign_in

pytestmark = pytest.mark.store_independent

CB_DUE_TODAY = "CB-20250612-0044"  # the risk-disclosure callback: due at 11:30 on the test morning
CB_POST_CLOSURE = "RET-20250613-0001"  # the closure whose post-closure callback is in the queue
COMPLAINT = "CMP-20250612-0001"  # the mis-selling complaint about 杜娟 (s107)


def keys_of(page: Page) -> list[str]:
    return [link.inner_text() for link in page.locator("[data-task-row] td a").all()
            if re.match(r"^[A-Z]+-\d{8}-\d{4}$", link.inner_text())]


def test_a_call_centre_agent_claims_works_and_completes_the_task_due_today(page: Page, server, demo_cases_loaded):
    due_today = demo_cases_loaded[CB_DUE_TODAY]
    sign_in(page, server, "s003")
    expect(page.locator("#tab-mine .count")).to_have_text("0")
    page.click("#tab-group")
    queue = keys_of(page)
    assert due_today in queue
    dues = page.locator("[data-task-row] td:nth-child(6)").all_inner_texts()
    assert dues == sorted(dues), "nearest deadline first"
    # Bulk claim: the due-today callback and the one after it.
    picked = [key for key in queue if key != queue[0]][:2]
    for key in picked:
        page.locator(f"[data-task-row]:has(a:text-is('{key}')) input[type=checkbox]").check()
    page.click("text=认领所选")
    expect(page.locator(".flash").first).to_contain_text("已认领 2 项任务")
    page.click("#tab-mine")
    expect(page.locator("#tab-mine .count")).to_have_text("2")
    assert keys_of(page)[0] == due_today  # the one due today comes first
    expect(page.locator("[data-task-row]").first.locator(".sla")).to_contain_text("剩余")
    screenshot(page, "inbox-mine")
    page.locator("[data-task-row]").first.locator("td a").first.click()
    expect(page.locator("h1")).to_have_text("外呼")
    # An empty form is refused: a summary at the top, focused, linking each field.
    page.click("button.primary:text('办结')")
    summary = page.locator("#error-summary")
    expect(summary).to_be_visible()
    expect(summary).to_be_focused()
    expect(summary).to_contain_text("外呼时间")
    expect(summary).to_contain_text("外呼结果")
    expect(page.locator("#attempt_at")).to_have_attribute("aria-invalid", "true")
    screenshot(page, "task-form-errors")
    # The recording becomes required once the client was reached.
    page.fill("#attempt_at", "2026-11-25T10:35")
    page.fill("#dialled_number_masked", "138****0421")
    page.select_option("#result", "reached")
    expect(page.locator("#recording_id")).to_have_js_property("required", True)
    page.fill("#recording_id", "REC-7731")
    page.click("button.primary:text('办结')")
    # The next step of the same case is this person's: offered at once.
    expect(page.locator("h1")).to_have_text("身份核实")
    expect(page.locator(".flash").first).to_contain_text("已办结")
    screenshot(page, "task-next-step")


def test_a_draft_survives_a_reload(page: Page, server, demo_cases_loaded):
    sign_in(page, server, "s003")
    page.click("#tab-group")
    page.locator("[data-task-row]").first.locator("td a").first.click()
    page.click("text=认领")
    page.fill("#dialled_number_masked", "139****0000")
    page.click("text=保存草稿")
    expect(page.locator("#draft-status")).to_contain_text("草稿已于")
    page.reload()
    expect(page.locator("#dialled_number_masked")).to_have_value("139****0000")


def test_a_supervisor_sees_the_breached_task_in_red(page: Page, server, demo_cases_loaded):
    sign_in(page, server, "s002")  # the call-centre supervisor, at headquarters
    page.click("#tab-team")
    page.select_option("select[name=due]", "overdue")
    page.click("button:text('筛选')")
    breached = page.locator("[data-task-row] .sla-breached").first
    expect(breached).to_contain_text("已逾期")
    assert breached.evaluate("e => getComputedStyle(e).color") == "rgb(179, 38, 30)"
    screenshot(page, "supervisor-overdue")


def test_the_recused_subject_finds_the_complaint_nowhere(page: Page, server, demo_cases_loaded):
    complaint = demo_cases_loaded[COMPLAINT]
    sign_in(page, server, "s107")
    for tab in ("mine", "group", "watched", "done"):
        page.goto(f"{server}/?tab={tab}")
        assert complaint not in keys_of(page)
    response = page.goto(f"{server}/cases/{complaint}")
    assert response is not None and response.status == 404
    response = page.goto(f"{server}/cases/{complaint}/diagram.bpmn")
    assert response is not None and response.status == 404


def test_a_change_without_the_csrf_token_is_refused(page: Page, server, demo_cases_loaded):
    sign_in(page, server, "s003")
    refused = page.request.post(f"{server}/tasks/claim", form={"task": "1"})
    assert refused.status == 400
    refused = page.request.post(f"{server}/language", form={"locale": "en"}, headers={"HX-Request": "true"})
    assert refused.status == 400
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    accepted = page.request.post(f"{server}/language", form={"locale": "zh_CN", "csrf_token": token},
                                 max_redirects=0)
    assert accepted.status == 302


def test_the_language_is_remembered_for_the_person(page: Page, server, demo_cases_loaded, browser):
    sign_in(page, server, "s003")
    expect(page.locator("nav[aria-label] a").first).to_have_text("待办")
    page.select_option("#locale", "en")
    expect(page.locator("nav[aria-label] a").first).to_have_text("Inbox")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    other = browser.new_context()
    try:
        elsewhere = other.new_page()
        sign_in(elsewhere, server, "s003")
        expect(elsewhere.locator("nav[aria-label] a").first).to_have_text("Inbox")
    finally:
        other.close()


def test_the_pages_fit_a_phone_without_horizontal_scroll(page: Page, server, demo_cases_loaded):
    page.set_viewport_size({"width": 375, "height": 740})
    sign_in(page, server, "s003")
    pages = [f"{server}/?tab=group", f"{server}/cases/{demo_cases_loaded[CB_DUE_TODAY]}", f"{server}/notifications"]
    page.goto(pages[0])
    pages.append(server + page.locator("[data-task-row] td a").first.get_attribute("href"))
    for address in pages:
        page.goto(address)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{address} scrolls sideways by {overflow}px"
    screenshot(page, "phone-task")


def test_the_case_page_draws_the_path_taken_and_the_open_step(page: Page, server, demo_cases_loaded):
    sign_in(page, server, "s003")
    page.goto(f"{server}/cases/{demo_cases_loaded[CB_DUE_TODAY]}")
    expect(page.locator(".diagram")).to_have_attribute("data-ready", "true")
    assert page.locator(".diagram .bpm-completed").count() >= 2
    active = page.locator(".diagram .bpm-active")
    expect(active).to_have_count(1)
    assert "bpm-sla-at_risk" in (active.get_attribute("class") or "")
    expect(page.locator("table.steps")).to_contain_text("外呼")
    # Clicking a step on the diagram leads to its row; a done step says who did it, when,
    # how long it was open and what it wrote.
    page.locator(".diagram .djs-element[data-element-id='call_attempt']").click()
    expect(page.locator("tr[data-element='call_attempt']")).to_be_focused()
    screenshot(page, "case")


def test_a_done_step_tells_who_when_how_long_and_what(page: Page, server, demo_cases_loaded):
    sign_in(page, server, "s103")  # HZ01's 客服总监: investigates the mis-selling complaint
    page.goto(f"{server}/cases/{demo_cases_loaded[COMPLAINT]}")
    done = page.locator("tr.step-done details").first
    expect(done.locator("summary")).to_contain_text("完成")
    expect(done.locator("summary")).to_contain_text("历时")
    done.locator("summary").click()
    expect(done.locator("dl.data")).to_be_visible()


def test_notifications_are_listed_counted_and_marked_read(page: Page, server, demo_cases_loaded):
    sign_in(page, server, "s003")
    count = page.locator("header .count")
    expect(count).to_be_visible()
    page.click("header nav >> text=通知")
    unread = page.locator(".notifications li.unread")
    assert unread.count() == int(count.inner_text())
    screenshot(page, "notifications")
    page.click("text=全部标为已读")
    expect(page.locator(".notifications li.unread")).to_have_count(0)
    expect(page.locator("header .count")).to_have_count(0)


def test_no_page_has_a_serious_or_critical_accessibility_violation(page: Page, server, demo_cases_loaded):
    axe = Axe()
    pages = []
    page.goto(f"{server}/login")
    pages.append(("login", axe.run(page)))
    sign_in(page, server, "s003")
    page.goto(f"{server}/?tab=group")
    pages.append(("inbox", axe.run(page)))
    page.locator("[data-task-row]").first.locator("td a").first.click()
    page.click("text=认领")
    page.click("button.primary:text('办结')")
    pages.append(("task with errors", axe.run(page)))
    page.goto(f"{server}/cases/{demo_cases_loaded[CB_DUE_TODAY]}")
    expect(page.locator(".diagram")).to_have_attribute("data-ready", "true")
    pages.append(("case", axe.run(page)))
    page.goto(f"{server}/notifications")
    pages.append(("notifications", axe.run(page)))
    found = [(name, v["id"], v["impact"], v["help"]) for name, result in pages
             for v in result.response["violations"] if v["impact"] in ("serious", "critical")]
    assert found == []


def test_the_keyboard_moves_opens_and_claims(page: Page, server, demo_cases_loaded):
    sign_in(page, server, "s003")
    page.goto(f"{server}/?tab=group")
    first_key = keys_of(page)[0]
    page.keyboard.press("j")
    expect(page.locator("[data-task-row]").first).to_be_focused()
    page.keyboard.press("j")
    expect(page.locator("[data-task-row]").nth(1)).to_be_focused()
    page.keyboard.press("k")
    page.keyboard.press("c")  # claims the focused row in place
    expect(page.locator("[data-task-row]").first.locator("button")).to_have_text("退回")
    page.keyboard.press("/")
    expect(page.locator("[data-filter]")).to_be_focused()
    page.locator("[data-task-row]").first.focus()
    page.keyboard.press("Enter")
    expect(page.locator(".crumbs")).to_contain_text(first_key)


def test_the_inbox_refreshes_itself_and_says_when_a_task_arrived(page: Page, server, demo_cases_loaded, db, rt,
                                                                staff):
    from engine.process import messages

    sign_in(page, server, "s003")
    page.goto(f"{server}/?tab=group")
    before = page.locator("[data-task-row]").count()
    with db.transaction() as s:  # a new account opens: its callback joins the call centre's queue
        messages.correlate(s, rt, name="account_opened", correlation_key=None, actor=staff["s003"],
                           payload={"client_id": "C08", "branch_code": "NB01", "opened_at": "2026-11-25"})
    page.evaluate("htmx.trigger('#rows', 'refresh')")  # what the 30-second poll does
    expect(page.locator("tr.new")).to_contain_text("有新任务到达", timeout=10000)
    expect(page.locator("[data-task-row]")).to_have_count(before + 1)


def test_a_filtered_list_is_saved_as_a_named_view(page: Page, server, demo_cases_loaded):
    sign_in(page, server, "s003")
    page.goto(f"{server}/?tab=group&due=overdue")
    page.click("text=已存视图")
    page.fill("details.views input[name=name]", "逾期回访")
    page.click("text=保存当前视图")
    expect(page.locator(".flash").first).to_contain_text("视图已保存")
    page.goto(f"{server}/")
    page.click("text=已存视图")
    page.click("details.views a:text('逾期回访')")
    expect(page).to_have_url(re.compile(r"due=overdue"))
    expect(page.locator("select[name=due]")).to_have_value("overdue")


def test_a_comment_is_kept_on_the_case_and_in_its_timeline(page: Page, server, demo_cases_loaded, db):
    from sqlalchemy import select

    from engine.models import AuditEvent, Comment

    sign_in(page, server, "s003")
    page.goto(f"{server}/cases/{demo_cases_loaded[CB_DUE_TODAY]}")
    page.fill("#comment-body", "客户要求下午再打")
    page.click("text=提交备注")
    expect(page.locator(".comments")).to_contain_text("客户要求下午再打")
    expect(page.locator(".timeline")).to_contain_text("备注")
    with db.transaction() as s:
        assert [c.body for c in s.execute(select(Comment)).scalars()] == ["客户要求下午再打"]
        assert s.execute(select(AuditEvent).where(AuditEvent.kind == "comment.added")).scalar_one().actor == "s003"


def test_a_counter_clerk_reveals_an_id_number_for_a_reason_and_it_is_recorded(page: Page, server,
                                                                              demo_cases_loaded, db):
    from sqlalchemy import select

    from engine.models import AuditEvent

    sign_in(page, server, "s302")  # SX01 counter: the transfer's instructions
    page.goto(f"{server}/?tab=group")
    page.locator(f"[data-task-row]:has(a:text-is('{demo_cases_loaded['RET-20250616-0002']}')) td a").first.click()
    expect(page.locator("#client-title")).to_be_visible()
    page.click("text=查看完整")
    page.select_option("select[name=reason]", label="身份核验")  # the reason in words, sent as its id
    page.click("text=查看（留痕）")
    expect(page.locator("#reveal-result .revealed")).to_be_visible()
    shown = page.locator("#reveal-result .revealed span").first.inner_text()
    assert re.fullmatch(r"\d{17}[\dX]", shown)
    with db.transaction() as s:
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "client.revealed")).scalar_one()
    assert (event.actor, event.data["field"], event.data["reason"]) == ("s302", "id_number", "identity_verification")


def test_the_pages_show_what_the_api_shows_the_same_person(page: Page, server, demo_cases_loaded, client):
    """Masking, the field policy and recusal are the engine's: the case page and the API agree."""
    from tests.support.api import API, login

    key = demo_cases_loaded[CB_DUE_TODAY]
    headers = login(client, "s003", "demo")
    (found,) = client.get(f"{API}/instances", query_string={"business_key": key}, headers=headers).json
    shown = client.get(f"{API}/instances/{found['id']}", headers=headers).json
    sign_in(page, server, "s003")
    page.goto(f"{server}/cases/{key}")
    # Each term carries its variable's name (the page titles it as the forms do); the process's
    # working values sit folded away, so their text is read whatever is shown.
    terms = [dt.get_attribute("title") for dt in page.locator("section:has(#data-title) dt").all()]
    values = [(dd.text_content() or "").strip() for dd in page.locator("section:has(#data-title) dd").all()]
    on_page = dict(zip(terms, values, strict=True))
    in_api = {k: v for k, v in shown["data"].items() if v not in (None, "", [], {})}
    assert sorted(on_page) == sorted(in_api)
    for name in ("client_id", "callback_type", "service_group"):
        assert on_page[name] == str(in_api[name])
    # Withheld groups by their names, in the reader's language (the Chinese half of the title).
    withheld = {re.split(r"\s+[A-Za-z]", w["title"], maxsplit=1)[0] for w in shown["withheld"]}
    assert withheld and all(name in page.locator("section:has(#data-title) .hint").inner_text()
                            for name in withheld)
    # And the cases one reads in the API are the cases one can open as pages, and no others.
    for other in (COMPLAINT, "RET-20250616-0002", "VIP-20250603-0004"):
        key = demo_cases_loaded[other]
        listed = client.get(f"{API}/instances", query_string={"business_key": key}, headers=headers).json
        assert page.goto(f"{server}/cases/{key}").status == (200 if listed else 404), other
