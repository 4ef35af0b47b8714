"""Tiny LoRA files for the tiny HiDream transformer, saved as trainers save them: random low-rank
weights in safetensors, in the diffusers/PEFT layout or ComfyUI's (kohya-style) one; files that must
be refused (another architecture's LoRA, kohya's lora_unet_ keys); and a host serving them over HTTP.
numpy only, no torch. The tests and bench/run.py use them."""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save

from hidream_service.inference.lora_checks import TransformerShape, read_header_of_file

#: The modules the tiny LoRAs adapt: every attention projection, as most HiDream LoRAs do.
ATTENTION = ("to_q", "to_k", "to_v", "to_out")


def layer_shapes(transformer_dir: Path) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each Linear of a transformer folder, read from its headers."""
    config = json.loads((transformer_dir / "config.json").read_text())
    modules = TransformerShape.from_config(config).modules
    shapes = {}
    for path in transformer_dir.glob("*.safetensors"):
        for key, entry in read_header_of_file(path).tensors.items():
            module = key.removesuffix(".weight")
            if module in modules:
                shapes[module] = (entry.shape[1], entry.shape[0])
    return shapes


def lora_tensors(
    shapes: dict[str, tuple[int, int]], *, seed: int, prefix: str = "transformer.", rank: int = 4, size: float = 0.3
) -> dict[str, np.ndarray]:
    """A random LoRA on every attention projection, its keys under `prefix`."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for module, (in_features, out_features) in sorted(shapes.items()):
        if module.rsplit(".", 1)[-1].removesuffix("_t") not in ATTENTION:
            continue
        tensors[f"{prefix}{module}.lora_A.weight"] = (rng.standard_normal((rank, in_features)) * size).astype(
            np.float32
        )
        tensors[f"{prefix}{module}.lora_B.weight"] = (rng.standard_normal((out_features, rank)) * size).astype(
            np.float32
        )
    return tensors


def lora_file(shapes: dict[str, tuple[int, int]], *, seed: int, prefix: str = "transformer.") -> bytes:
    return save(lora_tensors(shapes, seed=seed, prefix=prefix))


def flux_lora_file() -> bytes:
    """A LoRA of another architecture (FLUX's transformer blocks), in the diffusers layout."""
    tensors = {}
    for block in range(2):
        for name in ("to_q", "to_k"):
            module = f"transformer.transformer_blocks.{block}.attn.{name}"
            tensors[f"{module}.lora_A.weight"] = np.zeros((4, 32), dtype=np.float32)
            tensors[f"{module}.lora_B.weight"] = np.zeros((32, 4), dtype=np.float32)
    return save(tensors)


def kohya_lora_file() -> bytes:
    """kohya's own layout (lora_unet_ keys, lora_down/lora_up and alpha), which diffusers does not
    convert for HiDream."""
    module = "lora_unet_double_stream_blocks_0_block_attn1_to_q"
    return save(
        {
            f"{module}.alpha": np.array(4.0, dtype=np.float32),
            f"{module}.lora_down.weight": np.zeros((4, 32), dtype=np.float32),
            f"{module}.lora_up.weight": np.zeros((32, 4), dtype=np.float32),
        }
    )


class FileHost:
    """A real HTTP server on loopback serving files by path, counting the GETs of each path."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.gets: Counter[str] = Counter()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host.gets[self.path] += 1
                body = host.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("content-length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def add(self, path: str, content: bytes) -> str:
        self.files[path] = content
        return self.url(path)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
