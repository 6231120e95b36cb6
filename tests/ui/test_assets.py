"""The pages' committed files are what their sources make: the bundles are what esbuild
builds from worklist_ui/package-lock.json, and the Chinese catalogue is compiled from the
current words with every page string translated."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.store_independent

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "worklist_ui"


def test_the_committed_bundles_are_what_the_lock_file_builds(tmp_path):
    node = shutil.which("node")
    assert node, "node is needed to rebuild the pages' bundles (make test installs the packages)"
    assert (UI / "node_modules" / "esbuild").is_dir(), "run `make test` (npm ci) first"
    subprocess.run([node, "tools/build.mjs", str(tmp_path)], cwd=UI, check=True, timeout=120)
    committed = {p.name: p.read_bytes() for p in (UI / "static" / "dist").iterdir()}
    built = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(built) == sorted(committed)
    stale = [name for name in built if built[name] != committed[name]]
    assert stale == [], f"rebuild with `npm run build --prefix worklist_ui`: {stale} differ"


def test_the_chinese_catalogue_is_complete_and_compiled():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import i18n as catalogue
    finally:
        sys.path.pop(0)
    po, mo, missing = catalogue.build()
    assert missing == [], "give these page strings their Chinese in worklist_ui/translations_zh.py"
    folder = UI / "translations" / "zh" / "LC_MESSAGES"
    assert (folder / "messages.po").read_bytes() == po, "run `.venv/bin/python scripts/i18n.py`"
    assert (folder / "messages.mo").read_bytes() == mo, "run `.venv/bin/python scripts/i18n.py`"
