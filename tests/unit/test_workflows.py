"""The GitHub workflows: linted offline (GitHub's schema with check-jsonschema, zizmor's security
audits), their deploy and rollback rules read from the YAML, their shell steps run against stand-in
`gh`, `modal` and `python` commands, and the deploy's smoke test script run against a live server."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import modal_app
from hidream_service.config import Settings
from hidream_service.server import create_app
from tests.integration.harness import free_port, serving

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
SMOKE_TEST = ROOT / ".github" / "scripts" / "smoke_test.py"
BIN = Path(sys.executable).parent
MODAL_TOKEN = {"MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET"}
SMOKE_KEY = "smoke-key"
WEB_FUNCTION = "web"  # modal_app's web endpoint, whose URL the smoke test gets


def run(*command: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name not in ("GH_TOKEN", "GITHUB_TOKEN")}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def workflow(name: str) -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    return loaded


def triggers(loaded: dict[Any, Any]) -> dict[str, Any]:
    on: dict[str, Any] = loaded[True]  # YAML 1.1 reads the key `on` as True
    return on


def step(job: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [step for step in job["steps"] if step.get("name", "").startswith(name)]
    the_step: dict[str, Any] = found
    return the_step


def squashed(expression: str) -> str:
    return " ".join(expression.split())


def test_the_workflows_exist() -> None:
    assert {path.name for path in WORKFLOWS} == {"ci.yml", "deploy.yml", "rollback.yml"}


def test_the_workflows_match_githubs_schema() -> None:
    done = run(str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS))

    assert done.returncode == 0, done.stdout + done.stderr


def test_zizmor_finds_nothing_offline() -> None:
    done = run(str(BIN / "zizmor"), "--offline", "--no-progress", *map(str, WORKFLOWS))

    assert done.returncode == 0, done.stdout + done.stderr


def test_every_action_is_pinned_by_commit_sha() -> None:
    for path in WORKFLOWS:
        for job in yaml.safe_load(path.read_text())["jobs"].values():
            for step in job["steps"]:
                if "uses" in step:
                    _, ref = step["uses"].split("@")
                    assert len(ref) == 40 and all(c in "0123456789abcdef" for c in ref), (path.name, step["uses"])


def test_no_workflow_grants_permissions_at_the_top_but_deploys_read_only() -> None:
    deploy, rollback = workflow("deploy.yml"), workflow("rollback.yml")

    assert deploy["permissions"] == rollback["permissions"] == {}
    assert deploy["jobs"]["target"]["permissions"] == deploy["jobs"]["deploy"]["permissions"] == {"contents": "read"}
    assert rollback["jobs"]["rollback"]["permissions"] == {"contents": "read"}


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".github" / "workflows" / "ci.yml").read_text()

    assert "bash .ci/run" in ci


def test_ci_runs_on_the_pushes_deploy_waits_for_main_and_version_tags() -> None:
    push = triggers(workflow("ci.yml"))["push"]

    assert push["branches"] == ["main"] and push["tags"] == ["v*"]


# Deploy: only after ci passed on a push of this repository, the commit ci tested.


def test_deploy_runs_only_when_ci_completes_or_by_hand() -> None:
    on = triggers(workflow("deploy.yml"))

    assert set(on) == {"workflow_run", "workflow_dispatch"}
    assert on["workflow_run"] == {"workflows": [workflow("ci.yml")["name"]], "types": ["completed"]}
    assert on["workflow_dispatch"]["inputs"]["environment"]["options"] == ["staging", "production"]


def test_deploy_goes_on_only_for_a_successful_ci_run_of_a_push_to_main_or_a_version_tag() -> None:
    condition = squashed(workflow("deploy.yml")["jobs"]["target"]["if"])

    for clause in (
        "github.event_name == 'workflow_dispatch' || (",
        "github.event.workflow_run.conclusion == 'success' &&",
        "github.event.workflow_run.event == 'push' &&",
        "github.event.workflow_run.head_repository.full_name == github.repository &&",
        "(github.event.workflow_run.head_branch == 'main' || startsWith(github.event.workflow_run.head_branch, 'v'))",
    ):
        assert clause in condition


def test_deploy_checks_out_the_commit_ci_tested_without_keeping_credentials() -> None:
    jobs = workflow("deploy.yml")["jobs"]
    checkout = next(step for step in jobs["deploy"]["steps"] if step.get("uses", "").startswith("actions/checkout@"))

    assert jobs["deploy"]["needs"] == "target" and jobs["deploy"]["if"] == "needs.target.outputs.environment != ''"
    assert checkout["with"] == {"ref": "${{ needs.target.outputs.sha }}", "persist-credentials": False}
    assert step(jobs["target"], "Pick")["env"]["HEAD_SHA"] == "${{ github.event.workflow_run.head_sha }}"


def stand_in(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text(f"#!/usr/bin/env bash\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def run_step(
    the_step: dict[str, Any], tmp_path: Path, env: dict[str, str], stand_ins: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    """A step's `run:` under bash as GitHub runs it (-eo pipefail), with stand-in commands first on
    PATH; returns the process and what the step wrote to GITHUB_OUTPUT."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, script in stand_ins.items():
        stand_in(bin_dir, name, script)
    output = tmp_path / "github_output"
    output.write_text("")
    done = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", the_step["run"]],
        env={
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "GITHUB_OUTPUT": str(output),
            "GITHUB_REPOSITORY": "owner/repo",
            "GITHUB_SHA": "default-branch-sha",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    written = dict(line.split("=", 1) for line in output.read_text().splitlines())
    return done, written


MAIN_TIP = 'echo "gh $*" >> "$CALLS"; echo main-tip'  # what `gh api .../branches/main` answers


@pytest.mark.parametrize(
    ("event", "head_branch", "head_sha", "expected"),
    [
        ("workflow_run", "main", "main-tip", {"environment": "staging", "sha": "main-tip"}),
        ("workflow_run", "v1.4.0", "tagged", {"environment": "production", "sha": "tagged"}),
        ("workflow_run", "main", "older", {}),  # main has moved on: that commit's own run deploys it
        ("workflow_dispatch", "", "", {"environment": "production", "sha": "default-branch-sha"}),
    ],
)
def test_the_target_is_staging_for_mains_tip_production_for_a_tag_or_the_one_chosen(
    tmp_path: Path, event: str, head_branch: str, head_sha: str, expected: dict[str, str]
) -> None:
    pick = step(workflow("deploy.yml")["jobs"]["target"], "Pick")
    calls = tmp_path / "calls"
    calls.touch()
    chosen = "production" if event == "workflow_dispatch" else ""
    env = {"EVENT": event, "CHOSEN": chosen, "HEAD_BRANCH": head_branch, "HEAD_SHA": head_sha, "CALLS": str(calls)}

    done, outputs = run_step(pick, tmp_path, env, {"gh": MAIN_TIP})

    assert done.returncode == 0, done.stderr
    assert outputs == expected
    asked_for_mains_tip = ["gh api repos/owner/repo/branches/main --jq .commit.sha"]
    assert calls.read_text().splitlines() == (asked_for_mains_tip if head_branch == "main" else [])


# One deploy or rollback per environment; the Modal token only where Modal is called.


def test_one_deploy_or_rollback_per_environment_at_a_time() -> None:
    deploy, rollback = workflow("deploy.yml"), workflow("rollback.yml")
    deploy_job, rollback_job = deploy["jobs"]["deploy"], rollback["jobs"]["rollback"]

    assert "concurrency" not in deploy and "concurrency" not in rollback  # per environment, not per ref
    assert deploy_job["concurrency"] == {
        "group": "deploy-${{ needs.target.outputs.environment }}",
        "cancel-in-progress": False,
    }
    assert deploy_job["environment"]["name"] == "${{ needs.target.outputs.environment }}"
    assert rollback_job["concurrency"] == {"group": "deploy-${{ inputs.environment }}", "cancel-in-progress": False}
    assert rollback_job["environment"]["name"] == "${{ inputs.environment }}"


def secrets_by_place(path: Path) -> dict[str, set[str]]:
    """Each secret a workflow names, and where: 'workflow', 'job:<id>', or '<job>/<step>/<key>'."""
    loaded = yaml.safe_load(path.read_text())
    found: dict[str, set[str]] = {}

    def scan(node: Any, place: str) -> None:
        for name in re.findall(r"secrets\.([A-Za-z0-9_]+)", yaml.safe_dump(node)):
            found.setdefault(name, set()).add(place)

    scan({key: value for key, value in loaded.items() if key != "jobs"}, "workflow")
    for job_id, job in loaded["jobs"].items():
        scan({key: value for key, value in job.items() if key != "steps"}, f"job:{job_id}")
        for the_step in job["steps"]:
            for key, value in the_step.items():
                scan(value, f"{job_id}/{the_step.get('name', the_step.get('uses'))}/{key}")
    return found


def test_the_modal_token_is_in_the_deploy_and_rollback_steps_env_only() -> None:
    deploy = secrets_by_place(ROOT / ".github" / "workflows" / "deploy.yml")
    rollback = secrets_by_place(ROOT / ".github" / "workflows" / "rollback.yml")
    ci = secrets_by_place(ROOT / ".github" / "workflows" / "ci.yml")

    assert ci == {}
    for name in MODAL_TOKEN:
        assert deploy[name] == {"deploy/Deploy/env"}
        assert rollback[name] == {"rollback/Roll back/env"}
    assert deploy["HIDREAM_SMOKE_API_KEY"] == {"deploy/Smoke test (health, then a hidream/noop job)/env"}
    assert rollback["HIDREAM_SMOKE_API_KEY"] == {"rollback/Smoke test (health, then a hidream/noop job)/env"}
    assert set(deploy) == set(rollback) == {*MODAL_TOKEN, "HIDREAM_SMOKE_API_KEY"}


# The deploy, then its smoke test; the rollback.

WEB_URL_STAND_IN = 'echo "python $*" >> "$CALLS"; echo url=https://ws-staging--hidream-service-web.modal.run'


def test_the_deploy_step_deploys_the_tested_commit_and_reports_the_web_url(tmp_path: Path) -> None:
    deploy = step(workflow("deploy.yml")["jobs"]["deploy"], "Deploy")
    calls = tmp_path / "calls"
    env = {"CALLS": str(calls), "DEPLOY_SHA": "abc123"}

    done, outputs = run_step(
        deploy, tmp_path, env, {"modal": 'echo "modal $*" >> "$CALLS"', "python": WEB_URL_STAND_IN}
    )

    assert done.returncode == 0, done.stderr
    modal_call, python_call = calls.read_text().splitlines()
    assert modal_call == "modal deploy modal_app.py --tag abc123"
    assert f'modal.Function.from_name("{modal_app.APP_NAME}", "{WEB_FUNCTION}")' in python_call
    assert getattr(modal_app, WEB_FUNCTION).info().web_info is not None
    assert deploy["env"]["DEPLOY_SHA"] == "${{ needs.target.outputs.sha }}"
    assert outputs == {"url": "https://ws-staging--hidream-service-web.modal.run"}


@pytest.mark.parametrize("workflow_name", ["deploy.yml", "rollback.yml"])
def test_the_smoke_test_runs_after_modal_against_the_url_it_reported(workflow_name: str) -> None:
    (job,) = [job for job in workflow(workflow_name)["jobs"].values() if "environment" in job]
    names = [the_step.get("name", "") for the_step in job["steps"]]
    modal_step = step(job, "Deploy" if workflow_name == "deploy.yml" else "Roll back")
    smoke = step(job, "Smoke test")

    assert names.index(smoke["name"]) == len(names) - 1 > names.index(modal_step["name"])
    assert smoke["run"] == 'python .github/scripts/smoke_test.py "$BASE_URL"'
    assert smoke["env"]["BASE_URL"] == f"${{{{ vars.HIDREAM_BASE_URL || steps.{modal_step['id']}.outputs.url }}}}"
    assert job["env"]["MODAL_ENVIRONMENT"] == job["environment"]["name"]
    assert all("timeout-minutes" in the_step for the_step in (modal_step, smoke)) and "timeout-minutes" in job


def test_rollback_is_by_hand_for_one_environment_and_an_optional_version() -> None:
    rollback = workflow("rollback.yml")
    inputs = triggers(rollback)["workflow_dispatch"]["inputs"]

    assert set(triggers(rollback)) == {"workflow_dispatch"}
    assert inputs["environment"]["options"] == ["staging", "production"] and inputs["environment"]["required"]
    assert not inputs["version"]["required"]
    assert step(rollback["jobs"]["rollback"], "Roll back")["env"]["VERSION"] == "${{ inputs.version }}"


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("", f"modal app rollback {modal_app.APP_NAME} --env staging"),
        ("v12", f"modal app rollback {modal_app.APP_NAME} v12 --env staging"),
        ("12", None),  # Modal's versions are `v` and digits
        ("v1; modal app stop", None),
    ],
)
def test_the_rollback_step_runs_modal_app_rollback(tmp_path: Path, version: str, expected: str | None) -> None:
    rollback = step(workflow("rollback.yml")["jobs"]["rollback"], "Roll back")
    calls = tmp_path / "calls"
    calls.touch()
    env = {"CALLS": str(calls), "VERSION": version, "MODAL_ENVIRONMENT": "staging"}

    done, outputs = run_step(
        rollback, tmp_path, env, {"modal": 'echo "modal $*" >> "$CALLS"', "python": WEB_URL_STAND_IN}
    )

    modal_calls = [call for call in calls.read_text().splitlines() if call.startswith("modal")]
    if expected is None:
        assert done.returncode == 1 and "version must be v and digits" in done.stdout
        assert modal_calls == []
    else:
        assert done.returncode == 0, done.stderr
        assert modal_calls == [expected]
        assert outputs["url"].startswith("https://")


# The smoke test script, for real against a served app (noop only, no weights).


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("smoke"), api_keys=[SMOKE_KEY], sqlite_synchronous="NORMAL", weights=None
    )
    with serving(create_app(settings)) as url:
        yield url


def smoke_test(url: str, key: str | None, *options: str) -> subprocess.CompletedProcess[str]:
    # -I -S: no site-packages and no environment-driven imports, as on a bare runner: stdlib only.
    env = {name: value for name, value in os.environ.items() if "proxy" not in name.lower()}
    env.pop("HIDREAM_SMOKE_API_KEY", None)
    if key is not None:
        env["HIDREAM_SMOKE_API_KEY"] = key
    command = [sys.executable, "-I", "-S", str(SMOKE_TEST), url, "--poll-interval", "0.05", *options]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


def test_the_smoke_test_passes_against_a_healthy_service(service_url: str) -> None:
    done = smoke_test(service_url, SMOKE_KEY, "--deadline", "30")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "health: ok, serving hidream/noop" in done.stdout
    assert re.search(r"job \S+ completed; its image \(\d+ bytes\) is served", done.stdout)
    assert done.stdout.endswith("smoke test passed\n")


def test_the_smoke_test_fails_saying_which_key_to_set_when_refused(service_url: str) -> None:
    done = smoke_test(service_url, "not-a-key", "--deadline", "30")

    assert done.returncode == 1
    assert "answered 401: set HIDREAM_SMOKE_API_KEY" in done.stderr


def test_the_smoke_test_gives_up_at_its_deadline_when_nothing_answers() -> None:
    done = smoke_test(f"http://127.0.0.1:{free_port()}", SMOKE_KEY, "--deadline", "1")

    assert done.returncode == 1
    assert "GET /health failed" in done.stderr and "deadline reached" in done.stderr
