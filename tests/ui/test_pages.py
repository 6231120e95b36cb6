"""The pages through Flask's test client (no browser): the session cookie, the sign-in
answers, pages refusing what the engine refuses, and a completion that lost a race."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from engine.bootstrap import build_runtime
from engine.config import Settings
from engine.models import Task
from engine.process import tasks
from tests.support.cli import AUDIT_KEY

pytestmark = pytest.mark.sqlite


def token_of(response) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', response.get_data(as_text=True)).group(1)


def sign_in(client, username: str, password: str) -> None:
    token = token_of(client.get("/login"))
    answer = client.post("/login", data={"username": username, "password": password, "csrf_token": token})
    assert answer.status_code == 302, answer.get_data(as_text=True)


def open_review(db, rt, people, key="R-1"):
    from engine.process import instances

    with db.transaction() as s:
        instances.start(s, rt, process_key="review", business_key=key, actor=people.clerk,
                        data={"priority": 50, "due_at": None})
        return s.execute(select(Task.id).where(Task.business_key == key)).scalar_one()


def test_the_session_cookie_is_http_only_and_same_site_lax(client, people):
    token = token_of(client.get("/login"))
    answer = client.post("/login", data={"username": "li", "password": "li-pw", "csrf_token": token})
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert "Expires" not in cookie  # a browser-session cookie: the token inside expires on the server


def test_behind_tls_the_session_cookie_is_secure(database_url, db, people):
    from api import create_app

    settings = Settings.from_env({"BPM_DATABASE_URL": database_url, "BPM_SECURE_COOKIES": "true",
                                  "BPM_AUDIT_KEY": AUDIT_KEY})
    client = create_app(settings, runtime=build_runtime(settings), database=db).test_client()
    token = token_of(client.get("/login"))
    answer = client.post("/login", data={"username": "li", "password": "li-pw", "csrf_token": token})
    assert "Secure" in answer.headers["Set-Cookie"]


def test_a_wrong_password_is_told_in_chinese_and_signs_nobody_in(client, people):
    token = token_of(client.get("/login"))
    answer = client.post("/login", data={"username": "li", "password": "nope", "csrf_token": token})
    assert answer.status_code == 401
    assert "用户名或密码错误" in answer.get_data(as_text=True)
    assert client.get("/").status_code == 302


def test_the_sign_in_page_is_throttled_by_the_same_rule_as_the_api(client, people):
    """Five wrong passwords a minute, from the page or the API, are one count: the sixth
    attempt is refused before the password is checked, the right one too, in Chinese."""
    for _ in range(3):
        token = token_of(client.get("/login"))
        answer = client.post("/login", data={"username": "li", "password": "nope", "csrf_token": token})
        assert answer.status_code == 401
    for _ in range(2):
        assert client.post("/api/v1/auth/login", json={"username": "li", "password": "nope"}).status_code == 401
    token = token_of(client.get("/login"))
    answer = client.post("/login", data={"username": "li", "password": "li-pw", "csrf_token": token})
    assert answer.status_code == 429
    assert 0 < int(answer.headers["Retry-After"]) <= 60
    assert "登录失败次数过多" in answer.get_data(as_text=True)
    assert client.get("/").status_code == 302  # nobody signed in


def test_signing_out_of_the_pages_ends_the_token_a_copied_cookie_holds(client, people):
    sign_in(client, "li", "li-pw")
    cookie = client.get_cookie("session")
    assert cookie is not None and client.get("/").status_code == 200
    client.post("/logout", data={"csrf_token": token_of(client.get("/"))})
    assert client.get("/").status_code == 302
    client.set_cookie("session", cookie.value)  # the cookie as it was before signing out
    assert client.get("/").status_code == 302


def test_a_sign_in_never_sends_the_person_to_another_site(client, people):
    token = token_of(client.get("/login"))
    for target in ("https://evil.example/", "//evil.example/x"):
        answer = client.post(f"/login?next={target}",
                             data={"username": "li", "password": "li-pw", "csrf_token": token})
        assert answer.headers["Location"] == "/"


def test_the_pages_refuse_a_task_the_engine_refuses(client, db, rt, people, review):
    task_id = open_review(db, rt, people)
    sign_in(client, "chen", "chen-pw")  # another branch, in none of the task's groups
    assert client.get(f"/tasks/{task_id}").status_code == 404
    token = token_of(client.get("/"))
    claimed = client.post(f"/tasks/{task_id}/claim", data={"csrf_token": token})
    assert claimed.status_code == 302
    with db.transaction() as s:
        assert s.get(Task, task_id).assignee is None


def test_a_completion_that_lost_the_race_says_who_won_and_returns_to_the_inbox(client, db, rt, people, review):
    task_id = open_review(db, rt, people)
    sign_in(client, "li", "li-pw")
    token = token_of(client.get(f"/tasks/{task_id}"))
    with db.transaction() as s:  # the teammate is quicker
        tasks.complete(s, rt, task_id=task_id, actor=people.teammate, data={"amount": 10, "summary": "开户资料"})
    answer = client.post(f"/tasks/{task_id}", data={"csrf_token": token, "amount": "12", "summary": "开户资料"})
    assert answer.status_code == 302 and answer.headers["Location"] == "/"
    assert "zhao 已先行办结此任务" in client.get("/").get_data(as_text=True)


def test_a_phone_number_written_in_a_comment_is_shown_masked(client, db, rt, people, review):
    from engine.process import worklist

    task_id = open_review(db, rt, people)
    with db.transaction() as s:
        instance_id = s.get(Task, task_id).instance_id
        worklist.add_comment(s, instance_id=instance_id, actor=people.clerk, body="客户手机 13761547720，下午回电",
                             now=rt.now())
    sign_in(client, "li", "li-pw")
    page = client.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert "13761547720" not in page
    assert "137****7720" in page


def _card(html: str, title_id: str) -> str:
    found = re.search(rf'<section class="card" aria-labelledby="{title_id}">(.*?)</section>', html, re.S)
    assert found, title_id
    return found.group(1)


def _pairs(card: str) -> dict[str, str]:
    return {re.sub(r"<[^>]+>", "", dt).strip(): re.sub(r"<[^>]+>", "", dd).strip()
            for dt, dd in re.findall(r"<dt[^>]*>(.*?)</dt><dd>(.*?)</dd>", card, re.S)}


def test_the_case_data_reads_as_its_forms_name_it(client, demo_cases_loaded):
    sign_in(client, "s002", "demo")
    html = client.get(f"/cases/{demo_cases_loaded['CMP-20250612-0001']}").get_data(as_text=True)
    card = _card(html, "data-title")
    titled, working = card.split("<details", 1)
    shown = _pairs(titled)
    assert shown["收到时间"] == "2026-11-23 10:00"  # stored in UTC, shown in Beijing time
    assert shown["投诉渠道"] == "柜台"  # an option by its title, not its value (counter)
    assert shown["贵宾等级"] == "钻石卡" and shown["客户号"] == "C02"
    assert "received_at" not in shown and "channel" not in shown
    assert _pairs(working)["is_regulator_transfer"] == "否"  # a boolean in words
    assert "对您隐藏： 投诉内容" in card  # the withheld group by its name
    steps = _card(html, "open-title")
    assert "彭涛 (s103)" in steps


def test_an_open_step_waits_for_its_groups_by_their_names(client, demo_cases_loaded, db):
    from engine.models import Group

    sign_in(client, "s002", "demo")
    key = demo_cases_loaded["RET-20250616-0002"]
    steps = _card(client.get(f"/cases/{key}").get_data(as_text=True), "open-title")
    with db.transaction() as s:
        open_groups = {g for t in s.execute(select(Task).where(Task.business_key == key, Task.assignee.is_(None)))
                       .scalars() for g in t.candidate_groups}
        names = dict(s.execute(select(Group.key, Group.name).where(Group.key.in_(open_groups))).all())
    assert open_groups and all(names[g] in steps for g in open_groups)
    assert not any(f"· {g}" in steps for g in open_groups if names[g] != g)


def test_a_task_page_names_its_holder_and_the_clients_tier(client, demo_cases_loaded, db, rt):
    key = demo_cases_loaded["CB-20250612-0044"]
    with db.transaction() as s:
        task_id = s.execute(select(Task.id).where(Task.business_key == key, Task.status == "open")).scalar_one()
        tasks.claim(s, rt, task_id=task_id, actor=_actor(s, "s003"))
    sign_in(client, "s003", "demo")
    html = client.get(f"/tasks/{task_id}").get_data(as_text=True)
    assert "高晨 (s003)" in html
    client_card = _pairs(_card(html, "client-title"))
    assert client_card["分类与等级"].split("·")[-1].strip() == "金卡"


def _actor(session, username):
    from engine.access import identity
    from engine.models import User

    return identity.actor_for(session, session.execute(select(User).where(User.username == username)).scalar_one())


def test_the_case_timeline_shows_the_path_the_engine_took_by_its_chinese_names(client, demo_cases_loaded):
    """The start event, the gateways (and where they sent the case) and the service steps are
    in the timeline beside what people did (issue 13 item 20)."""
    sign_in(client, "s002", "demo")
    html = client.get(f"/cases/{demo_cases_loaded['CMP-20250612-0001']}").get_data(as_text=True)
    timeline = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", _card(html, "timeline-title")))
    assert "开始事件 · 收到投诉" in timeline
    assert "经过网关 · 是否投诉? · 转至 投诉级别?" in timeline
    assert "自动步骤完成 · 分类分级" in timeline


def test_the_branch_head_hands_the_client_contact_over_from_the_case_page(client, db, rt, staff):
    """The case page names the complaint's first-contact owner; the branch head chooses
    whom to hand it to (the subject's service group is not offered) and says why; a clerk
    sees the owner but no form."""
    import time_machine

    from tests.api.test_case_owner import _registered
    from tests.brokerage.test_complaint import MONDAY_9

    with time_machine.travel(MONDAY_9, tick=False):
        case = _registered(db, rt, staff, "CMP-20260302-0961")
        sign_in(client, "s104", "demo")
        card = _card(client.get(f"/cases/{case.key}").get_data(as_text=True), "owner-title")
        assert "首办责任人" in card and "(s104)" in card and "<form" not in card
        sign_in(client, "s101", "demo")
        page = client.get(f"/cases/{case.key}")
        card = _card(page.get_data(as_text=True), "owner-title")
        offered = re.findall(r'<option value="(s\d+)"', card)
        assert "s108" in offered and "s103" in offered and "s003" in offered  # the branch and HQ intake
        assert not {"s104", "s105", "s106", "s107", "s205"} & set(offered)  # owner, recused, other branch
        answer = client.post(f"/cases/{case.instance_id}/owner",
                             data={"username": "s108", "reason": "年假", "next": f"/cases/{case.key}",
                                   "csrf_token": token_of(page)})
        assert answer.status_code == 302 and answer.headers["Location"].endswith(f"/cases/{case.key}")
        shown = client.get(f"/cases/{case.key}").get_data(as_text=True)
        assert "客户联系已移交给 s108" in shown
        assert "(s108)" in _card(shown, "owner-title")
        assert "移交客户联系" in _card(shown, "timeline-title")
        # A refusal comes back as a message on the page, not an error page.
        answer = client.post(f"/cases/{case.instance_id}/owner",
                             data={"username": "s108", "reason": "", "next": f"/cases/{case.key}",
                                   "csrf_token": token_of(page)})
        assert answer.status_code == 302
        assert "reason" in client.get(f"/cases/{case.key}").get_data(as_text=True)
    assert case.task("acknowledge").assignee == "s108"
