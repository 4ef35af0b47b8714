"""The GitHub workflows, linted offline: GitHub's schema (check-jsonschema) and zizmor's security audits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name not in ("GH_TOKEN", "GITHUB_TOKEN")}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_both_workflows_exist() -> None:
    assert {path.name for path in WORKFLOWS} == {"ci.yml", "deploy.yml"}


def test_the_workflows_match_githubs_schema() -> None:
    done = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS))

    assert done.returncode == 0, done.stdout + done.stderr


def test_zizmor_finds_nothing_offline() -> None:
    done = run(str(BIN / "zizmor"), "--offline", "--no-progress", *map(str, WORKFLOWS))

    assert done.returncode == 0, done.stdout + done.stderr


def test_deploy_runs_modal_deploy_on_main_and_tags_with_an_environment_per_target() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "deploy.yml").read_text())
    job = workflow["jobs"]["deploy"]

    assert workflow[True] == {"push": {"branches": ["main"], "tags": ["v*"]}}  # YAML reads `on` as True
    assert set(job["env"]) == {"MODAL_ENVIRONMENT", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"}
    assert "production" in job["env"]["MODAL_ENVIRONMENT"] and "staging" in job["env"]["MODAL_ENVIRONMENT"]
    assert any("modal deploy modal_app.py" in step.get("run", "") for step in job["steps"])


def test_every_action_is_pinned_by_commit_sha() -> None:
    for path in WORKFLOWS:
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            for step in job["steps"]:
                if "uses" in step:
                    _, ref = step["uses"].split("@")
                    assert len(ref) == 40 and all(c in "0123456789abcdef" for c in ref), (path.name, step["uses"])


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".github" / "workflows" / "ci.yml").read_text()

    assert "bash .ci/run" in ci
