"""The demo's text: the standard library's own source by default, or the user's file."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np

# Stable, pure-Python modules every CPython installation ships; about 0.5 MB together.
DEFAULT_MODULES = (
    "textwrap",
    "string",
    "heapq",
    "bisect",
    "functools",
    "contextlib",
    "fractions",
    "statistics",
    "difflib",
    "argparse",
    "dataclasses",
    "enum",
    "shlex",
    "calendar",
)


class DataError(ValueError):
    """Bad demo input (missing or empty file, too little text)."""


def default_corpus() -> tuple[bytes, str]:
    chunks = []
    for name in DEFAULT_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        chunks.append(pathlib.Path(spec.origin).read_bytes())
    if not chunks:
        raise DataError("the standard library's source files were not found; pass --data PATH")
    return b"\n".join(chunks), f"Python standard library source ({len(chunks)} modules)"


def load_corpus(path: str | None) -> tuple[bytes, str]:
    if path is None:
        return default_corpus()
    p = pathlib.Path(path)
    if not p.is_file():
        raise DataError(f"--data {path}: no such file")
    text = p.read_bytes()
    if not text.strip():
        raise DataError(f"--data {path}: the file is empty")
    return text, str(p)


def split(text: bytes, seq_len: int, held_out: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out byte arrays (the held-out part is the end of the text)."""
    data = np.frombuffer(text, dtype=np.uint8).astype(np.int32)
    cut = int(len(data) * (1 - held_out))
    train, valid = data[:cut], data[cut:]
    need = seq_len + 2
    if len(train) < need or len(valid) < need:
        raise DataError(
            f"the text has {len(data)} bytes; at least {int(need / held_out) + 1} are needed for "
            f"sequences of {seq_len}"
        )
    return train, valid


def batches(data: np.ndarray, batch_size: int, seq_len: int, steps: int, seed: int) -> np.ndarray:
    """``steps`` batches of random windows, ``(steps, batch, seq_len + 1)``, fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(data) - seq_len - 1, size=(steps, batch_size))
    return data[starts[..., None] + np.arange(seq_len + 1)]
