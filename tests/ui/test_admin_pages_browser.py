"""The owners' deadline pages in Debian's chromium, each driven once from the header: a policy
previewed and saved, next year's notice pasted into the calendar (showing what it moved),
the schedules read; axe on each page before and after the change."""

from __future__ import annotations

from datetime import date

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect
from sqlalchemy import select

from engine.models import CalendarDay, SlaPolicy
from tests.ui.conftest import screenshot, sign_in

NOTICE_2027 = ("date,kind,name\n2027-01-01,holiday,元旦\n"
               + "".join(f"2027-02-{d:02d},holiday,春节\n" for d in range(5, 12))
               + "2027-01-31,workday,春节调休\n2027-02-20,workday,春节调休\n")


def _serious(page: Page) -> list[tuple[str, str, str]]:
    result = Axe().run(page)
    return [(v["id"], v["impact"], v["help"]) for v in result.response["violations"]
            if v["impact"] in ("serious", "critical")]


def test_an_owner_previews_and_saves_a_policy_in_the_browser(page: Page, server, db, demo_cases_loaded):
    sign_in(page, server, "s001")
    page.click("header >> text=时限策略")
    expect(page.locator("tr[data-policy='complaint.investigate.major']")).to_be_visible()
    assert _serious(page) == []
    page.locator("tr[data-policy='complaint.investigate.major'] th a").click()
    page.fill("#f-target_amount", "7")
    page.click("button[value=preview]")
    expect(page.locator("#preview")).to_be_visible()
    expect(page.locator("#preview-count")).to_have_attribute("data-changed", "2")
    expect(page.locator("dd[data-shift=median]")).to_have_text("−4 天")
    assert _serious(page) == []
    screenshot(page, "owner-sla-preview")
    with db.transaction() as s:  # the preview saved nothing
        assert s.execute(select(SlaPolicy.target_amount).where(
            SlaPolicy.key == "complaint.investigate.major")).scalar_one() == 10
    page.click("button[value=save]")
    expect(page.locator(".flash")).to_contain_text("已保存：2 个未完成任务获得了新的截止时间")
    with db.transaction() as s:
        assert s.execute(select(SlaPolicy.target_amount).where(
            SlaPolicy.key == "complaint.investigate.major")).scalar_one() == 7

    page.fill("#f-target_amount", "很多")
    page.click("button[value=preview]")
    expect(page.locator("#err-target_amount")).to_be_visible()
    expect(page.locator("#f-target_amount")).to_have_attribute("aria-invalid", "true")
    assert _serious(page) == []


def test_an_owner_imports_next_years_notice_and_sees_what_moved(page: Page, server, db, demo_cases_loaded):
    sign_in(page, server, "s001")
    page.click("header >> text=工作日历")
    expect(page.locator("table.month")).to_have_count(12)
    expect(page.locator("#coverage-warning")).to_contain_text("2027")
    expect(page.locator("td[data-day='2026-10-01']")).to_contain_text("休")
    assert _serious(page) == []
    page.fill("#import-year", "2027")
    page.fill("#import-table", NOTICE_2027)
    page.click("#import-form button[type=submit]")
    expect(page.locator("#change-message")).to_contain_text("已导入 2027 年")
    expect(page.locator("tr[data-moved-schedule='callback-periodic']")).to_contain_text("2027-01-04 10:00")
    expect(page.locator("td[data-day='2027-01-31']")).to_contain_text("班")
    expect(page.locator("#coverage-warning")).to_have_count(0)
    assert _serious(page) == []
    screenshot(page, "owner-calendar-import")
    with db.transaction() as s:
        assert s.get(CalendarDay, date(2027, 2, 8)).working is False


def test_an_owner_reads_the_schedules(page: Page, server, demo_cases_loaded):
    sign_in(page, server, "s001")
    page.click("header >> text=定时任务")
    section = page.locator("section[data-schedule='vip-monthly']")
    expect(section).to_contain_text("每月第一个工作日")
    expect(section.locator("ol.next-slots li").first).to_have_text("2026-12-01 09:00 周二")
    expect(page.locator("section[data-schedule='callback-periodic']")).to_contain_text("每季度第一个工作日")
    assert _serious(page) == []
    screenshot(page, "owner-schedules")
