"""HiDream-E1's prompt and output size against the official release's rules (HiDream-ai/HiDream-E1
at f6f0631): pure functions, no model."""

from __future__ import annotations

import itertools

import pytest

from hidream_service.inference.hidream_e1 import TARGET_MARKER, edit_prompt, target_of
from hidream_service.models.hidream_e1 import HiDreamE1FullInput, output_size


def release_format(instruction: str, description: str) -> str:
    """The prompt the release's instruction_refinement.py writes: the instruction stripped of blanks,
    then of dots at either end, and the description as given."""
    return "Editing Instruction: {}. Target Image Description: {}".format(instruction.strip().strip("."), description)


def release_target(prompt: str) -> str:
    """What the release's pipeline encodes for its refine stage: the text after the marker, else the prompt."""
    return prompt.split("Target Image Description:")[1].strip() if "Target Image Description:" in prompt else prompt


INSTRUCTIONS = ["make it snow", "Make it snow.", "  Convert the image into a Ghibli style.  ", "add a hat..."]
DESCRIPTIONS = ["a snowy street", "A person in a pink t-shirt, in a Ghibli style."]


@pytest.mark.parametrize(("instruction", "description"), list(itertools.product(INSTRUCTIONS, DESCRIPTIONS)))
def test_a_description_gives_the_release_s_format_for_both_models(instruction: str, description: str) -> None:
    for always_formatted in (True, False):
        prompt = edit_prompt(instruction, f" {description} ", always_formatted=always_formatted)

        assert prompt == release_format(instruction, description)
        assert target_of(prompt) == release_target(prompt) == description


@pytest.mark.parametrize("instruction", INSTRUCTIONS)
@pytest.mark.parametrize("description", [None, "", "   "])
def test_e1_full_without_a_description_still_gets_the_format_with_it_left_blank(
    instruction: str, description: str | None
) -> None:
    prompt = edit_prompt(instruction, description, always_formatted=True)

    assert prompt == release_format(instruction, "").rstrip()
    assert prompt.startswith("Editing Instruction: ") and prompt.endswith(TARGET_MARKER)
    # The refine stage is then guided by an empty prompt (against the negative one), as the release's
    # pipeline does for a prompt whose description is blank.
    assert target_of(prompt) == release_target(prompt) == ""


def test_e1_1_takes_the_bare_instruction_and_refines_with_it() -> None:
    prompt = edit_prompt("  make it snow. ", None, always_formatted=False)

    assert prompt == "make it snow."
    assert target_of(prompt) == release_target(prompt) == prompt


def test_an_instruction_already_in_the_format_is_not_wrapped_again() -> None:
    formatted = release_format("Convert the image into a Ghibli style", "A person in a Ghibli style.")

    assert edit_prompt(formatted, None, always_formatted=True) == formatted
    assert target_of(formatted) == "A person in a Ghibli style."


def test_e1_full_keeps_fal_s_defaults() -> None:
    defaults = HiDreamE1FullInput(image_url="https://example.com/a.png", edit_instruction="x")

    assert (defaults.num_inference_steps, defaults.guidance_scale, defaults.image_guidance_scale) == (50, 3.5, 2.0)


SIDES = [1, 7, 48, 64, 96, 768, 1000, 1024, 1360, 2048, 4000]


@pytest.mark.parametrize("rendered", [(768, 768), (1024, 1024), (1184, 880), (64, 48)])
def test_an_edit_comes_back_at_the_source_s_size_unless_that_would_enlarge_it(rendered: tuple[int, int]) -> None:
    rendered_area = rendered[0] * rendered[1]
    for source in itertools.product(SIDES, SIDES):
        width, height = source
        if max(width, height) > 4 * min(width, height):
            continue  # refused at submit
        returned = output_size(source, rendered)
        if width * height <= rendered_area:
            assert returned == source  # the release resizes the edit back to the source's size
            continue
        # Larger sources: the source's aspect ratio at the pixel count the model rendered, to rounding.
        returned_width, returned_height = returned
        assert returned_width < width and returned_height < height
        assert abs(returned_width * height - returned_height * width) <= (width + height) / 2
        assert abs(returned_width * returned_height - rendered_area) <= returned_width + returned_height
