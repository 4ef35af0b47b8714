from __future__ import annotations

import pytest
from pydantic import ValidationError

from hidream_service.config import Settings
from hidream_service.models.hidream_i1 import (
    VARIANTS,
    HiDreamI1DevInput,
    HiDreamI1FastInput,
    HiDreamI1FullInput,
    rendered_size,
)


@pytest.mark.parametrize(
    ("requested", "rendered"),
    [
        ((1024, 1024), (1024, 1024)),
        ((512, 512), (1024, 1024)),
        ((2048, 2048), (1024, 1024)),
        ((720, 1280), (768, 1360)),
        ((1080, 1920), (768, 1360)),
        ((1360, 768), (1360, 768)),
        ((880, 1168), (880, 1168)),
        ((1248, 832), (1248, 832)),
    ],
)
def test_rendered_size_is_what_the_real_pipeline_makes(requested: tuple[int, int], rendered: tuple[int, int]) -> None:
    # Values worked out from diffusers' HiDreamImagePipeline for the real 1024x1024 area.
    assert rendered_size(*requested, area_side=1024) == rendered


def test_variant_recipes_match_the_official_release() -> None:
    assert [(v.steps, v.guidance, v.shift) for v in VARIANTS.values()] == [
        (50, 5.0, 3.0),
        (28, 0.0, 6.0),
        (16, 0.0, 3.0),
    ]
    for model, variant in ((HiDreamI1FullInput, "full"), (HiDreamI1DevInput, "dev"), (HiDreamI1FastInput, "fast")):
        defaults = model(prompt="x")
        assert defaults.num_inference_steps == VARIANTS[variant].steps
        assert defaults.guidance_scale == VARIANTS[variant].guidance


def test_fal_input_defaults() -> None:
    inputs = HiDreamI1FullInput(prompt="x").model_dump(mode="json")

    assert inputs["image_size"] == "square_hd"
    assert inputs["output_format"] == "jpeg"
    assert inputs["num_images"] == 1
    assert inputs["enable_safety_checker"] is True
    assert inputs["sync_mode"] is False


def test_unknown_fields_are_errors_not_ignored() -> None:
    with pytest.raises(ValidationError, match="extra"):
        HiDreamI1FullInput(prompt="x", prompt_embeds=[1, 2])  # type: ignore[call-arg]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nan_and_infinities_are_errors(value: str) -> None:
    with pytest.raises(ValidationError, match="finite number"):
        HiDreamI1FullInput.model_validate({"prompt": "x", "guidance_scale": value})


def test_settings_read_lists_from_comma_separated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIDREAM_API_KEYS", "a, b,,c")
    monkeypatch.setenv("HIDREAM_WEBHOOK_RETRY_SCHEDULE", "0,0.5,2")

    settings = Settings()
    assert settings.api_keys == ["a", "b", "c"]
    assert settings.webhook_retry_schedule == [0.0, 0.5, 2.0]


def test_settings_reject_negative_retry_delays() -> None:
    with pytest.raises(ValidationError):
        Settings(webhook_retry_schedule=[0, -1])
