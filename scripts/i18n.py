"""Write the pages' Chinese catalogue: extract every string of worklist_ui (Python and
templates), take each one's Chinese from worklist_ui/translations_zh.py, and write
translations/zh/LC_MESSAGES/messages.po and its compiled messages.mo.

    .venv/bin/python scripts/i18n.py          # after changing a page's words
"""

from __future__ import annotations

import io
import sys
from datetime import UTC, datetime
from pathlib import Path

from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_dir
from babel.messages.mofile import write_mo
from babel.messages.pofile import write_po

ROOT = Path(__file__).resolve().parent.parent
UI = ROOT / "worklist_ui"
sys.path.insert(0, str(ROOT))

from worklist_ui.translations_zh import ZH  # noqa: E402

METHODS = [("**.py", "python"), ("**/templates/**.html", "jinja2")]
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2)}


def build() -> tuple[bytes, bytes, list[str]]:
    """(.po bytes, .mo bytes, source strings that have no Chinese)."""
    # Fixed dates: the compiled catalogue must be the same bytes whenever it is built.
    fixed = datetime(2026, 1, 1, tzinfo=UTC)
    catalog = Catalog(locale="zh_CN", project="brokerage-bpm", fuzzy=False, creation_date=fixed, revision_date=fixed)
    missing = []
    extracted = extract_from_dir(str(UI), METHODS, keywords=KEYWORDS, options_map={"**/templates/**.html": {}})
    messages: dict[str | tuple[str, ...], None] = {}
    for _file, _line, message, _comments, _context in extracted:
        messages[message] = None
    for kind in ZH:
        if "." in kind and " " not in kind:  # the timeline's event kinds, shown through _(kind)
            messages[kind] = None
    for message in ("On track", "At risk", "Overdue", "Paused", "No due date"):
        messages[message] = None
    for message in sorted(messages, key=str):
        if isinstance(message, tuple):
            translated = tuple(ZH.get(m, "") for m in message)
            if not all(translated):
                missing.append(message[0])
            catalog.add(message, translated)
        else:
            if message not in ZH:
                missing.append(message)
            catalog.add(message, ZH.get(message, ""))
    po, mo = io.BytesIO(), io.BytesIO()
    write_po(po, catalog, omit_header=True, sort_output=True)
    write_mo(mo, catalog)
    return po.getvalue(), mo.getvalue(), missing


def main() -> int:
    po, mo, missing = build()
    # "zh": what gettext falls back to for zh_CN, which Babel reads as zh_Hans_CN.
    target = UI / "translations" / "zh" / "LC_MESSAGES"
    target.mkdir(parents=True, exist_ok=True)
    (target / "messages.po").write_bytes(po)
    (target / "messages.mo").write_bytes(mo)
    for message in missing:
        print(f"no Chinese for: {message!r}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
