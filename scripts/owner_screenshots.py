"""Take the pictures of docs/owners.md again: runs the owners' browser tests (Debian's chromium
through Playwright, over a test database with the demo's cases) with BPM_DOCS_IMAGES pointing
at docs/images, where they save each picture of one part of the page instead of under
var/screenshots. Needs what `make test` needs (PostgreSQL, a redis for BPM_TEST_REDIS_SERVER).

    .venv/bin/python scripts/owner_screenshots.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
PICTURES = ("owner-form-editor", "owner-draft-lint", "owner-import-refused")


def main() -> int:
    env = {**os.environ, "BPM_DOCS_IMAGES": str(IMAGES)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/ui/test_draft_forms_browser.py"], cwd=ROOT, env=env, check=False)
    if done.returncode != 0:
        return done.returncode
    for name in PICTURES:
        path = IMAGES / f"{name}.png"
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
