"""The README stays true: its settings table and its test command."""

from __future__ import annotations

import re
from pathlib import Path

from hidream_service.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def readme() -> str:
    return (ROOT / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme() -> None:
    documented = set(re.findall(r"^\| `HIDREAM_([A-Z_]+)` \|", readme(), flags=re.MULTILINE))

    assert documented == {name.upper() for name in Settings.model_fields}


def test_ci_runs_the_readme_test_command() -> None:
    first_block = readme().split("```bash\n", 1)[1].split("```", 1)[0]
    serve_line, test_line = [line.split("#")[0].strip() for line in first_block.strip().splitlines()]

    assert "hidream serve --weights tiny" in serve_line
    assert test_line in (ROOT / ".ci" / "run").read_text()
