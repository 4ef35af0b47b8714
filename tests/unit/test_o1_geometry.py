"""HiDream-O1's sizes and recipes, as the official release computes them."""

from __future__ import annotations

import pytest
from PIL import Image

from hidream_service.inference.hidream_o1.geometry import PRESETS, Geometry, plan_references
from hidream_service.inference.hidream_o1.recipes import DEV, DEV_TIMESTEPS, FULL, sampling_for

RELEASE = Geometry()


@pytest.mark.parametrize(
    ("requested", "snapped"),
    [
        ((1024, 1024), (2048, 2048)),  # square at any size is the 2K square
        ((2048, 2048), (2048, 2048)),
        ((1024, 576), (2560, 1440)),  # 16:9
        ((576, 1024), (1440, 2560)),
        ((1024, 768), (2304, 1728)),  # 4:3
        ((768, 1024), (1728, 2304)),
        ((1500, 1000), (2496, 1664)),  # 3:2
        ((2400, 1000), (3104, 1312)),  # wider than any preset: the widest
        ((1000, 4000), (1312, 3104)),
        ((1280, 1000), (2304, 1792)),  # 1.28 is closest to 9:7
    ],
)
def test_requests_snap_to_the_preset_with_the_closest_aspect_ratio(
    requested: tuple[int, int], snapped: tuple[int, int]
) -> None:
    assert RELEASE.snap(*requested) == snapped


def test_the_release_table_has_eleven_presets_up_to_2k_in_whole_patches() -> None:
    assert RELEASE.presets == PRESETS and len(PRESETS) == 11
    assert all(width % 32 == 0 and height % 32 == 0 for width, height in PRESETS)
    assert max(width * height for width, height in PRESETS) == 2048 * 2048


def test_a_scaled_table_keeps_the_order_and_whole_patches() -> None:
    tiny = Geometry(patch_size=2, divisor=32)

    assert tiny.presets[:3] == ((64, 64), (72, 54), (54, 72))
    assert all(width % 2 == 0 and height % 2 == 0 for width, height in tiny.presets)
    assert tiny.snap(1024, 576) == (80, 44)  # 16:9 at 1/32, rounded to whole patches
    assert tiny.keep_aspect_side == 64


@pytest.mark.parametrize(("count", "side"), [(1, 2048), (2, 1536), (3, 1024), (4, 1024), (5, 768), (8, 768), (9, 512)])
def test_references_shrink_as_there_are_more(count: int, side: int) -> None:
    assert RELEASE.reference_area_side(2048, 2048, count) == side


@pytest.mark.parametrize(("count", "side"), [(1, 384), (4, 384), (5, 288), (8, 288), (9, 192)])
def test_the_vision_encoder_sees_smaller_references_past_four(count: int, side: int) -> None:
    assert RELEASE.condition_side(count) == side


def test_condition_sizes_keep_the_aspect_ratio_in_whole_vision_tokens() -> None:
    assert RELEASE.condition_size(2048, 2048, 1) == (384, 384)
    assert RELEASE.condition_size(2560, 1440, 1) == (512, 288)  # 511.9 x 288.0, floored to 32s
    assert RELEASE.condition_size(1000, 8000, 1) == (128, 1056)


def test_one_reference_edit_keeps_the_snapped_size_and_resizes_the_reference_to_it() -> None:
    photo = Image.new("RGB", (3000, 2000))

    plan = plan_references(RELEASE, [photo], 2048, 2048, keep_original_aspect=False)

    assert (plan.width, plan.height) == (2048, 2048)
    assert plan.references[0].size == (2496, 1664)  # 3:2 at about 2048**2 pixels, in 32s
    assert plan.conditions[0].size == (448, 288)
    assert not plan.kept_aspect


def test_keep_original_aspect_takes_the_single_reference_size() -> None:
    photo = Image.new("RGB", (3000, 1000))

    kept = plan_references(RELEASE, [photo], 2048, 2048, keep_original_aspect=True)
    ignored = plan_references(RELEASE, [photo, photo], 2048, 2048, keep_original_aspect=True)

    assert (kept.width, kept.height) == kept.references[0].size == (3520, 1152)
    assert kept.kept_aspect
    assert (ignored.width, ignored.height) == (2048, 2048) and not ignored.kept_aspect


def test_full_runs_unipc_and_dev_its_distilled_timesteps() -> None:
    assert (FULL.steps, FULL.guidance, FULL.shift) == (50, 5.0, 3.0)
    assert (DEV.steps, DEV.guidance) == (28, 0.0)
    assert sampling_for(FULL, 50, 0).sampler == "unipc"
    assert sampling_for(DEV, 28, 1).sampler == "euler"  # editing
    flash = sampling_for(DEV, 28, 2)
    assert flash.sampler == "flash" and flash.timesteps == DEV_TIMESTEPS
    assert (flash.noise_scale, flash.noise_clip_std) == (7.5, 2.5)


def test_fewer_dev_steps_take_evenly_spaced_distilled_timesteps() -> None:
    assert sampling_for(DEV, 1, 0).timesteps == (999,)
    assert sampling_for(DEV, 4, 0).timesteps == (999, 857, 602, 8)
    assert sampling_for(DEV, 40, 0).timesteps == DEV_TIMESTEPS
