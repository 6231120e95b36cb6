"""The board in Debian's chromium: a branch head finds the breached work of their branch in
red and follows it to the task, and the page passes axe."""

from __future__ import annotations

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from tests.ui.conftest import screenshot, sign_in

OVERDUE_CALLBACK = "CB-20250401-0107"  # NB01's periodic callback, weeks overdue


def test_a_branch_head_sees_the_branchs_breach_in_red_and_drills_down_to_it(page: Page, server,
                                                                            demo_cases_loaded):
    sign_in(page, server, "s201")  # NB01's head
    page.click("header >> text=督办看板")
    row = page.locator("tr[data-board-row='NB01']")
    breached = row.locator("a.sla-breached")
    expect(breached).to_be_visible()
    colour = breached.evaluate("e => getComputedStyle(e).color")
    red, green, blue = (int(v) for v in colour.removeprefix("rgb(").rstrip(")").split(",")[:3])
    assert red > 150 and green < 100 and blue < 100, colour
    expect(page.locator("tr[data-board-row='HZ01']")).to_have_count(0)  # another branch's work is not theirs
    screenshot(page, "board-branch-head")
    number = int(breached.inner_text().split()[-1])
    breached.click()
    expect(page.locator("[data-task-row]")).to_have_count(number)
    page.locator(f"[data-task-row] a:text-is('{demo_cases_loaded[OVERDUE_CALLBACK]}')").click()
    expect(page.locator("h1")).to_have_text("外呼")  # the overdue call itself
    expect(page.locator(".sla-breached").first).to_be_visible()


def test_the_board_has_no_serious_or_critical_accessibility_violation(page: Page, server, demo_cases_loaded):
    sign_in(page, server, "s002")
    found = []
    for path in ("/board?by=step", "/board/figures", "/?tab=team"):
        page.goto(f"{server}{path}")
        found += [(path, v["id"], v["impact"], v["help"]) for v in Axe().run(page).response["violations"]
                  if v["impact"] in ("serious", "critical")]
    screenshot(page, "supervisor-team")
    page.goto(f"{server}/board/figures")
    screenshot(page, "figures")
    assert found == []


def test_a_bulk_reassignment_of_three_tasks_reports_the_one_the_person_may_not_take(page: Page, server,
                                                                                   demo_cases_loaded, db):
    from sqlalchemy import select

    from engine.models import ACTIVE_TASK_STATES, Task

    with db.transaction() as s:
        open_tasks = s.execute(select(Task).where(Task.status.in_(ACTIVE_TASK_STATES))).scalars().all()
        calls = sorted(t.id for t in open_tasks if "call_center_agent" in t.candidate_groups)[:2]
        other = next(t for t in open_tasks if "call_center_agent" not in t.candidate_groups)
    sign_in(page, server, "s002")  # the call centre's supervisor, at headquarters
    page.goto(f"{server}/?tab=team")
    for task_id in (*calls, other.id):
        page.locator(f"#task-{task_id} input[type=checkbox]").check()
    page.check("input[name=action][value=reassign]")
    page.fill("input[name=username]", "s004")
    page.fill("input[name=reason]", "高晨休假")
    page.click("text=执行")
    expect(page.locator(".flash").first).to_contain_text("已改派 2 项任务")
    refusal = page.locator(".flash", has_text="未执行")
    expect(refusal).to_have_count(1)
    expect(refusal).to_contain_text(f"#{other.id}")
    with db.transaction() as s:
        held = dict(s.execute(select(Task.id, Task.assignee).where(Task.id.in_([*calls, other.id]))).all())
    assert held[calls[0]] == held[calls[1]] == "s004" and held[other.id] != "s004"
