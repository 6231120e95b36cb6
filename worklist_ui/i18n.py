"""Language and time as people read them: Chinese unless the person chose English, and
every moment in Beijing time.

The templates' source strings are English (``_("Inbox")``); the Chinese catalogue
(``translations/zh_CN``) gives the words people see by default. Labels the diagrams and
forms carry are bilingual already (``登记投诉 Register complaint``): :func:`label` shows the
half in the reader's language.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from flask import Flask, session
from flask_babel import get_locale, gettext, ngettext
from flask_login import current_user

from engine.calendars import SHANGHAI

DEFAULT = "zh_CN"
LOCALES = ("zh_CN", "en")
_CJK_CHARS = "\u3000-\u303f\u3400-\u9fff\uff00-\uffef"
# Where the English half begins: Latin words after the Chinese (or its closing bracket).
_ENGLISH_START = re.compile(rf"(?<=[{_CJK_CHARS})0-9]) *(?=[A-Za-z]{{2}})")
_CJK_NOTE = re.compile(rf" *\(([^()]*[{_CJK_CHARS}][^()]*)\)")


def select_locale() -> str:
    """The signed-in person's choice, else this browser session's, else Chinese."""
    chosen = getattr(current_user, "locale", None) if current_user and current_user.is_authenticated else None
    chosen = chosen or session.get("locale")
    if chosen in LOCALES:
        return str(chosen)
    return DEFAULT


def is_chinese() -> bool:
    return str(get_locale() or DEFAULT).startswith("zh")


def label(title: str | None, *, chinese: bool | None = None) -> str:
    """The reader's half of a bilingual ``中文 English`` label (the whole of a one-language
    one). A Chinese note the English half carries in brackets, ``Target seat (深市必填)``,
    stays with the Chinese."""
    if not title:
        return ""
    text = title.strip()
    start = _ENGLISH_START.search(text)
    if start is None:
        return text
    chinese_half, english_half = text[:start.start()].strip(), text[start.end():].strip()
    if chinese_half.count("（") > chinese_half.count("）"):
        # The English is a gloss inside the Chinese brackets: 原因（可不答 optional）.
        chinese_half += "）"
        english_half = english_half.removesuffix("）").strip()
    notes = _CJK_NOTE.findall(english_half)
    if chinese is None:
        chinese = is_chinese()
    if chinese:
        notes = [re.sub(r"\s*\b[A-Za-z][A-Za-z ]*\b", "", note).strip() for note in notes]
        return chinese_half + "".join(f"（{note}）" for note in notes if note)
    return _CJK_NOTE.sub("", english_half).strip() or chinese_half


def beijing(moment: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A moment as Beijing time (every datetime the engine holds is timezone-aware)."""
    if moment is None:
        return ""
    return moment.astimezone(SHANGHAI).strftime(fmt)


def duration(seconds: float | None) -> str:
    """How long, in the largest whole unit that reads well: 3 天, 5 小时, 20 分钟."""
    if seconds is None:
        return ""
    value = abs(seconds)
    if value >= 86400:
        count = int(value // 86400)
        return ngettext("%(num)d day", "%(num)d days", count)
    if value >= 3600:
        count = int(value // 3600)
        return ngettext("%(num)d hour", "%(num)d hours", count)
    count = max(int(value // 60), 1)
    return ngettext("%(num)d minute", "%(num)d minutes", count)


SLA_TEXT = {
    "on_track": "On track",
    "at_risk": "At risk",
    "breached": "Overdue",
    "paused": "Paused",
    "none": "No due date",
}
SLA_ICON = {"on_track": "●", "at_risk": "▲", "breached": "■", "paused": "Ⅱ", "none": "–"}


def sla_phrase(state: str, seconds: float | None) -> str:
    """The clock in words: "剩余 2 天", "已逾期 3 天", "已暂停"."""
    if state == "breached":
        return gettext("Overdue by %(time)s", time=duration(seconds))
    if state == "paused":
        return gettext("Paused")
    if state == "none" or seconds is None:
        return gettext("No due date")
    return gettext("%(time)s left", time=duration(seconds))


def reveal_reason_names() -> dict[str, str]:
    """Why a full identifier is looked at, as the reveal form offers it."""
    return {"identity_verification": gettext("Identity verification"), "account_closure": gettext("Account closure"),
            "account_transfer": gettext("Account transfer"), "compliance_review": gettext("Compliance review"),
            "complaint_investigation": gettext("Complaint investigation"),
            "regulator_request": gettext("Regulator's request")}


def tier_name(tier: str) -> str:
    """银卡, 金卡, 钻石卡 (a tier the product does not know is shown as it is)."""
    names = {"silver": gettext("Silver"), "gold": gettext("Gold"), "diamond": gettext("Diamond")}
    return names.get(tier, tier)


def install(app: Flask) -> None:
    app.jinja_env.filters.update(label=label, beijing=beijing, duration=duration, tier=tier_name)
    app.jinja_env.globals.update(sla_phrase=sla_phrase, SLA_TEXT=SLA_TEXT, SLA_ICON=SLA_ICON,
                                 select_locale=select_locale, LOCALES=LOCALES)

    @app.context_processor
    def _language() -> dict[str, Any]:
        return {"lang": "zh-CN" if is_chinese() else "en", "chinese": is_chinese(),
                "REVEAL_REASON_NAMES": reveal_reason_names()}
