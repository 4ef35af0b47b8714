"""The token sequence HiDream-O1 denoises, and its multimodal rotary positions.

One sequence per prompt (official release, models/pipeline.py and models/utils.py):

    chat template(prompt, with one vision placeholder per reference) <|boi_token|> <|tms_token|>
    target patches (row-major)   reference 1 patches   reference 2 patches ...

Positions are Qwen3-VL's three axes (temporal, row, column):
- prompt tokens count up on all three axes; a reference's vision-encoder tokens inside the prompt
  sit on their (merged) grid from the current position, and the text after them resumes past the
  grid's longer side, as in Qwen3-VL;
- the target patches sit on their grid anchored at a fixed 4096 on every axis, whatever the
  prompt's length, and each reference's patches follow on their own grid past the previous one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hidream_service.inference.hidream_o1.model import DenoiserPrompt, VisionFeatures

BEGIN_IMAGE_TOKEN = "<|boi_token|>"
TIMESTEP_TOKEN = "<|tms_token|>"
IMAGE_PAD_TOKEN = "<|image_pad|>"
#: Where the target grid starts on every rotary axis.
TARGET_ORIGIN = 4096
#: The release's unconditional prompt for classifier-free guidance (a single space, not empty).
UNCONDITIONAL_PROMPT = " "

Grid = tuple[int, int]  # (rows, columns) of tokens


class PromptError(Exception):
    """The tokenizer or chat template does not have what O1's prompts need."""


class CaptionError(ValueError):
    """The caption contains O1's own special tokens."""


def rotary_positions(
    input_ids: Sequence[int],
    image_token_id: int,
    vision_grids: Sequence[Grid],
    target: Grid,
    references: Sequence[Grid],
) -> torch.Tensor:
    """[3, tokens] positions for the prompt, then the target patches, then each reference's patches."""
    axes: list[torch.Tensor] = []
    grids = iter(vision_grids)
    position = 0
    index = 0
    while index < len(input_ids):
        if input_ids[index] != image_token_id:
            run = 1
            while index + run < len(input_ids) and input_ids[index + run] != image_token_id:
                run += 1
            axes.append(torch.arange(position, position + run).expand(3, -1))
            position += run
        else:
            rows, columns = next(grids)
            run = rows * columns
            axes.append(_grid_positions(position, rows, columns))
            position += max(rows, columns)
        index += run
    axes.append(_grid_positions(TARGET_ORIGIN, *target))
    position = TARGET_ORIGIN + max(target)
    for rows, columns in references:
        axes.append(_grid_positions(position, rows, columns))
        position += max(rows, columns)
    return torch.cat(axes, dim=1)


def _grid_positions(start: int, rows: int, columns: int) -> torch.Tensor:
    row = torch.arange(rows).repeat_interleave(columns)
    column = torch.arange(columns).repeat(rows)
    return torch.stack([torch.zeros_like(row), row, column]) + start


@dataclass
class PromptBuilder:
    """Turns a caption (and the references' condition images) into a DenoiserPrompt."""

    tokenizer: Any
    image_processor: Any
    chat_template: str
    image_token_id: int
    timestep_token_id: int

    @classmethod
    def load(cls, directory: Path, image_token_id: int) -> PromptBuilder:
        from transformers import AutoImageProcessor, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(directory, local_files_only=True)
        ids = tokenizer.convert_tokens_to_ids([BEGIN_IMAGE_TOKEN, TIMESTEP_TOKEN, IMAGE_PAD_TOKEN])
        if tokenizer.unk_token_id in ids or None in ids or ids[2] != image_token_id:
            raise PromptError(f"{directory}: the tokenizer lacks O1's special tokens ({BEGIN_IMAGE_TOKEN}, ...)")
        return cls(tokenizer, image_processor, chat_template_of(directory, tokenizer), image_token_id, ids[1])

    def text_only(self, caption: str, target: Grid) -> DenoiserPrompt:
        input_ids = self._encode([{"role": "user", "content": caption}], images=0)
        positions = rotary_positions(input_ids, self.image_token_id, [], target, [])
        return DenoiserPrompt(torch.tensor([input_ids]), positions[:, None])

    def condition_inputs(self, conditions: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """pixel_values and image_grid_thw of the vision encoder's condition images."""
        processed = self.image_processor(images=conditions, return_tensors="pt")
        return processed["pixel_values"], processed["image_grid_thw"]

    def with_references(
        self, caption: str, image_grid_thw: torch.Tensor, vision: VisionFeatures, target: Grid, references: list[Grid]
    ) -> DenoiserPrompt:
        content: list[dict[str, str]] = [{"type": "image"} for _ in references]
        content.append({"type": "text", "text": caption})
        template_ids = self._encode([{"role": "user", "content": content}], images=len(references))
        merge = int(self.image_processor.merge_size)
        vision_grids = [(int(rows) // merge, int(columns) // merge) for _, rows, columns in image_grid_thw.tolist()]
        input_ids = self._expand_image_placeholders(template_ids, vision_grids)
        positions = rotary_positions(input_ids, self.image_token_id, vision_grids, target, references)
        return DenoiserPrompt(torch.tensor([input_ids]), positions[:, None], vision)

    def _encode(self, messages: list[dict[str, Any]], *, images: int) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )
        ids: list[int] = self.tokenizer.encode(text + BEGIN_IMAGE_TOKEN + TIMESTEP_TOKEN, add_special_tokens=False)
        if ids.count(self.timestep_token_id) != 1 or ids.count(self.image_token_id) != images:
            raise CaptionError(
                f"the prompt may not contain the model's special tokens ({TIMESTEP_TOKEN}, {IMAGE_PAD_TOKEN})"
            )
        return ids

    def _expand_image_placeholders(self, ids: list[int], grids: list[Grid]) -> list[int]:
        """One placeholder per reference becomes one token per merged vision token, as the Qwen3-VL
        processor does."""
        expanded: list[int] = []
        counts = iter(rows * columns for rows, columns in grids)
        for token in ids:
            expanded.extend([token] * next(counts) if token == self.image_token_id else [token])
        return expanded


def chat_template_of(directory: Path, tokenizer: Any) -> str:
    """The checkpoint's chat template: its own file (as a processor saves it), else the tokenizer's."""
    import json

    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    legacy = directory / "chat_template.json"
    if legacy.is_file():
        return str(json.loads(legacy.read_text())["chat_template"])
    if isinstance(tokenizer.chat_template, str):
        return tokenizer.chat_template
    raise PromptError(f"{directory} has no chat template (chat_template.jinja, chat_template.json or in the tokenizer)")
