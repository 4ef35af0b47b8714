"""`hidream run` turns a command line into an endpoint's input, by the names its schema uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from hidream_service.cli import build_parser
from hidream_service.commands.common import UsageError
from hidream_service.commands.run import build_arguments, output_paths, parse_assignment, progress_line
from hidream_service.models.hidream_i1 import HiDreamI1DevInput
from hidream_service.models.image_fields import image_fields
from hidream_service.models.noop import NoopInput


class EditingInput(BaseModel):
    image_url: str = Field(description="The image to edit.")
    edit_instruction: str


def model(input_model: type[BaseModel]) -> dict[str, object]:
    schema = input_model.model_json_schema()
    return {"id": "x", "input_schema": schema, "image_fields": [field.to_json() for field in image_fields(schema)]}


def arguments(*argv: str, input_model: type[BaseModel] = HiDreamI1DevInput) -> dict[str, object]:
    return build_arguments(build_parser().parse_args(["run", *argv]), model(input_model))


def test_flags_become_the_endpoints_inputs() -> None:
    assert arguments("a fox", "--out", "fox.webp", "--seed", "3", "--steps", "4", "--num-images", "2") == {
        "prompt": "a fox",
        "seed": 3,
        "num_inference_steps": 4,
        "num_images": 2,
        "output_format": "webp",
    }


def test_steps_go_to_the_field_the_endpoint_has() -> None:
    assert arguments("x", "--json", "--steps", "7", input_model=NoopInput) == {"prompt": "x", "num_steps": 7}


def test_set_takes_json_values_and_plain_strings() -> None:
    given = arguments(
        "x", "--json", "--set", 'image_size={"width": 512, "height": 256}', "--set", "negative_prompt=blur"
    )

    assert given["image_size"] == {"width": 512, "height": 256}
    assert given["negative_prompt"] == "blur"
    assert parse_assignment("sync_mode=true") == ("sync_mode", True)


@pytest.mark.parametrize("bad", ["no-equals", "=value"])
def test_a_malformed_set_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError, match="NAME=VALUE"):
        parse_assignment(bad)


def test_an_unknown_image_extension_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--out must end in"):
        arguments("x", "--out", "fox.gif")


def test_several_images_are_numbered() -> None:
    assert output_paths(Path("out/fox.png"), 1) == [Path("out/fox.png")]
    assert output_paths(Path("out/fox.png"), 2) == [Path("out/fox-1.png"), Path("out/fox-2.png")]


def test_progress_line_shows_the_queue_then_the_progress() -> None:
    assert progress_line({"status": "IN_QUEUE", "queue_position": 2}) == "queued (2 ahead)"
    assert progress_line({"status": "IN_QUEUE", "queue_position": 0}) == "queued (next)"
    line = progress_line({"status": "IN_PROGRESS", "progress": {"step": 2, "total": 4}})
    assert line == f"[{'#' * 15}{'.' * 15}] step 2/4"
    assert progress_line({"status": "IN_PROGRESS", "progress": None}) == "in progress"


def test_an_editing_endpoint_takes_the_text_as_its_instruction() -> None:
    assert arguments("make it snow", "--json", input_model=EditingInput) == {"edit_instruction": "make it snow"}
