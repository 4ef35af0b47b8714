"""`hidream doctor`: each check finds the real problem and says what to do about it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hidream_service.commands.doctor import (
    GIB,
    Level,
    check_access,
    check_data_dir,
    check_database,
    check_disk,
    check_gpu,
    check_preload,
    check_webhook_secret,
    check_weights,
    report,
    run_checks,
)
from hidream_service.config import Settings
from hidream_service.dialects.registry import DialectEndings
from hidream_service.jobs.model import JobRequest
from hidream_service.jobs.service import JobService
from hidream_service.models.registry import DEFAULT_REGISTRY
from hidream_service.signing_keys import KEYS_FILE, SigningKeys
from tests.integration.harness import free_port
from tests.sql_stores import ENGINES, sql_outbox, sql_store
from webhooks.outbox import AttemptRecord, DeliveryState

TEST_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", **overrides)  # type: ignore[arg-type]


def write_variant(root: Path, directory: str = "HiDream-I1-Fast", *, with_transformer_weights: bool = True) -> Path:
    """A weights folder shaped like a diffusers save, with empty files where the tensors go."""
    variant = root / directory
    components = {"scheduler": ["diffusers", "FlowMatchLCMScheduler"], "transformer": ["diffusers", "X"]}
    components["text_encoder_4"] = [None, None]  # loaded from the Llama folder instead
    (variant / "scheduler").mkdir(parents=True)
    (variant / "scheduler" / "scheduler_config.json").write_text("{}")
    (variant / "transformer").mkdir()
    (variant / "transformer" / "config.json").write_text("{}")
    if with_transformer_weights:
        (variant / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    (variant / "model_index.json").write_text(json.dumps({"_class_name": "HiDreamImagePipeline", **components}))
    llama = root / "Llama-3.1-8B-Instruct"
    llama.mkdir(exist_ok=True)
    (llama / "config.json").write_text("{}")
    (llama / "model.safetensors").write_bytes(b"")
    return variant


def test_a_fresh_machine_is_ready_with_warnings_only(tmp_path: Path) -> None:
    checks = run_checks(settings(tmp_path))

    assert [check.level for check in checks if check.level is Level.FAIL] == []
    assert "ready to serve" in report(checks)


def test_a_data_dir_that_cannot_be_created_fails(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")

    check = check_data_dir(Settings(data_dir=tmp_path / "a-file" / "data"))

    assert check.level is Level.FAIL and "cannot be created" in check.message
    assert check.fix and "HIDREAM_DATA_DIR" in check.fix


def test_a_damaged_database_fails_with_what_to_do(tmp_path: Path) -> None:
    config = settings(tmp_path)
    config.data_dir.mkdir()
    config.database_path.write_bytes(b"this is not SQLite" * 100)

    check = check_database(config)

    assert check.level is Level.FAIL and check.fix and "move hidream.sqlite3 aside" in check.fix


@pytest.mark.parametrize("engine", ENGINES)
def test_failed_webhooks_are_a_warning_pointing_at_replay(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    shared = {"database_url": request.getfixturevalue("postgres_url")} if engine == "postgres" else {}
    config = settings(tmp_path, **shared)
    store = sql_store(config.sql_url)
    outbox = sql_outbox(config.sql_url)
    service = JobService(store, endings=DialectEndings(DEFAULT_REGISTRY))
    job, _ = service.submit(JobRequest("hidream/noop", {}, webhook_url="http://127.0.0.1:9/hook"))
    lease = service.lease_next("w")
    assert lease is not None
    service.complete(lease, {"images": []}, 0.1)
    (delivery,) = outbox.for_subject(job.id)
    outbox.record_attempt(
        delivery.id, AttemptRecord(0.0, 1.0, error="refused"), state=DeliveryState.FAILED, next_attempt_at=None
    )
    store.close()
    outbox.close()

    check = check_database(config)

    assert check.level is Level.WARN and "1 webhook(s) failed" in check.message
    assert check.fix and "hidream jobs replay-webhook" in check.fix


def test_a_postgres_it_cannot_reach_fails_without_showing_the_password(tmp_path: Path) -> None:
    config = settings(tmp_path, database_url=f"postgresql://hidream:s3cret@127.0.0.1:{free_port()}/hidream")

    check = check_database(config)

    assert check.level is Level.FAIL and "s3cret" not in check.message and "***" in check.message
    assert check.fix and "HIDREAM_DATABASE_URL" in check.fix


def test_no_weights_is_a_warning_and_a_missing_directory_a_failure(tmp_path: Path) -> None:
    assert check_weights(settings(tmp_path)).level is Level.WARN

    missing = check_weights(settings(tmp_path, weights=str(tmp_path / "nowhere")))

    assert missing.level is Level.FAIL and "does not exist" in missing.message


def test_complete_weights_pass(tmp_path: Path) -> None:
    write_variant(tmp_path / "weights")

    check = check_weights(settings(tmp_path, weights=str(tmp_path / "weights")))

    assert check.level is Level.OK and "fast complete" in check.message


def test_a_model_folder_without_its_weights_is_named(tmp_path: Path) -> None:
    write_variant(tmp_path / "weights", with_transformer_weights=False)

    check = check_weights(settings(tmp_path, weights=str(tmp_path / "weights")))

    assert check.level is Level.FAIL and "transformer has a config.json but no weight file" in check.message


def test_a_missing_shard_is_named(tmp_path: Path) -> None:
    variant = write_variant(tmp_path / "weights", with_transformer_weights=False)
    index = {"weight_map": {"a": "part-1.safetensors", "b": "part-2.safetensors"}}
    (variant / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    (variant / "transformer" / "part-1.safetensors").write_bytes(b"")

    check = check_weights(settings(tmp_path, weights=str(tmp_path / "weights")))

    assert check.level is Level.FAIL and "part-2.safetensors" in check.message


def test_a_missing_llama_folder_is_explained(tmp_path: Path) -> None:
    write_variant(tmp_path / "weights")
    for entry in (tmp_path / "weights" / "Llama-3.1-8B-Instruct").iterdir():
        entry.unlink()

    check = check_weights(settings(tmp_path, weights=str(tmp_path / "weights")))

    assert check.level is Level.FAIL and "Llama-3.1-8B-Instruct" in check.message


def test_a_directory_with_no_variant_fails(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()

    check = check_weights(settings(tmp_path, weights=str(tmp_path / "weights")))

    assert check.level is Level.FAIL and "HiDream-I1-Full" in check.message


def test_an_unknown_endpoint_to_preload_fails_naming_the_known_ones(tmp_path: Path) -> None:
    assert check_preload(settings(tmp_path, preload="fal-ai/hidream-i1-fast")).level is Level.OK

    check = check_preload(settings(tmp_path, preload="fal-ai/flux,fal-ai/hidream-i1-fast"))

    assert check.level is Level.FAIL and "fal-ai/flux" in check.message and check.fix
    assert "fal-ai/hidream-i1-fast" in check.fix


def test_webhook_secret_checks(tmp_path: Path) -> None:
    assert check_webhook_secret(settings(tmp_path, webhook_secret=TEST_SECRET)).level is Level.OK
    assert check_webhook_secret(settings(tmp_path, webhook_secret="whsec_not base64!")).level is Level.FAIL
    assert check_webhook_secret(settings(tmp_path, webhook_secret="whsec_c2hvcnQ=")).level is Level.WARN


def test_a_generated_secret_readable_by_others_is_a_warning(tmp_path: Path) -> None:
    config = settings(tmp_path)
    SigningKeys.for_settings(config)
    assert check_webhook_secret(config).level is Level.OK

    os.chmod(config.data_dir / KEYS_FILE, 0o644)
    check = check_webhook_secret(config)

    assert check.level is Level.WARN and check.fix == f"chmod 600 {config.data_dir / KEYS_FILE}"


def test_a_damaged_keys_file_fails(tmp_path: Path) -> None:
    config = settings(tmp_path)
    config.data_dir.mkdir()
    (config.data_dir / KEYS_FILE).write_text("{")

    assert check_webhook_secret(config).level is Level.FAIL


def test_free_disk_thresholds(tmp_path: Path) -> None:
    config = settings(tmp_path)

    assert check_disk(config, lambda path: 100 * GIB).level is Level.OK
    assert check_disk(config, lambda path: 5 * GIB).level is Level.WARN
    assert check_disk(config, lambda path: GIB // 2).level is Level.FAIL


def test_no_gpu_is_a_warning_unless_cuda_was_asked_for(tmp_path: Path) -> None:
    assert check_gpu(settings(tmp_path), lambda: []).message.startswith("no GPU: CPU only")
    assert check_gpu(settings(tmp_path), lambda: []).level is Level.WARN
    assert check_gpu(settings(tmp_path, device="cuda"), lambda: []).level is Level.FAIL
    found = check_gpu(settings(tmp_path), lambda: ["NVIDIA H100 (80 GiB)"])
    assert found.level is Level.OK and "H100" in found.message


def test_an_open_server_off_loopback_fails(tmp_path: Path) -> None:
    assert check_access(settings(tmp_path)).level is Level.OK
    assert check_access(settings(tmp_path, host="0.0.0.0")).level is Level.FAIL
    assert check_access(settings(tmp_path, host="0.0.0.0", api_keys=["k"])).level is Level.OK
