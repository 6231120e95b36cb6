"""Handing a complaint's client contact over from the case page, in Debian's chromium: the
branch head of HZ01 gives 蒋芳's contact on the demo's major complaint to 魏强 for her leave;
the subject's service group is not offered, and the handover is in the timeline."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.ui.conftest import screenshot, sign_in

MAJOR_COMPLAINT = "CMP-20250612-0001"  # C02's complaint about 杜娟 (HZ01-G1), registered by 蒋芳 (s104)


def test_the_branch_head_hands_the_client_contact_to_a_colleague_for_a_leave(page: Page, server,
                                                                             demo_cases_loaded):
    sign_in(page, server, "s101")  # 黄建华, HZ01's head
    page.goto(f"{server}/cases/{demo_cases_loaded[MAJOR_COMPLAINT]}")
    card = page.locator("section[aria-labelledby='owner-title']")
    expect(card.locator("h2")).to_have_text("首办责任人")
    expect(card.locator("p.owner")).to_contain_text("(s104)")
    choices = card.locator("select[name=username] option")
    values = [v for v in choices.evaluate_all("options => options.map(o => o.value)") if v]
    assert "s108" in values and not {"s104", "s105", "s106", "s107"} & set(values)  # owner, recused group
    card.locator("select[name=username]").select_option("s108")
    card.locator("textarea[name=reason]").fill("蒋芳年假一周，客户联系由魏强接手")
    screenshot(page, "case-owner-handover")
    card.locator("button[type=submit]").click()
    expect(page.locator(".flash").first).to_contain_text("客户联系已移交给 s108")
    expect(page.locator("section[aria-labelledby='owner-title'] p.owner")).to_contain_text("(s108)")
    expect(page.locator(".timeline")).to_contain_text("移交客户联系")
