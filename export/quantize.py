"""Quantize a GGUF in-process with llama.cpp (`llama_model_quantize`), and report fallbacks.

Small models have tensor rows that k-quants cannot split into 256-wide blocks; llama.cpp then
quantizes those tensors to another type. The report lists, per output file, every 2-D tensor whose
type differs from the level's main type, read back from the file itself.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import gguf
import llama_cpp
from pydantic import BaseModel

# level name -> (llama.cpp file type, the tensor type most weights get)
LEVELS: dict[str, tuple[int, str]] = {
    "f16": (llama_cpp.LLAMA_FTYPE_MOSTLY_F16, "F16"),
    "q8_0": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "Q8_0"),
    "q6_k": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K, "Q6_K"),
    "q5_k_m": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M, "Q5_K"),
    "q5_0": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_0, "Q5_0"),
    "q4_k_m": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, "Q4_K"),
    "q4_k_s": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_S, "Q4_K"),
    "q4_0": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "Q4_0"),
    "q3_k_m": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q3_K_M, "Q3_K"),
    "q2_k": (llama_cpp.LLAMA_FTYPE_MOSTLY_Q2_K, "Q2_K"),
}


class QuantizeError(RuntimeError):
    pass


class TensorTypes(BaseModel):
    level: str
    main_type: str
    counts: dict[str, int]  # tensor type -> number of tensors (2-D and up)
    other: dict[str, str]  # tensor name -> type, where it is not main_type


def parse_levels(text: str) -> list[str]:
    levels = [level.strip().lower() for level in text.split(",") if level.strip()]
    unknown = [level for level in levels if level not in LEVELS]
    if unknown or not levels:
        raise ValueError(f"unknown quantization level(s) {unknown}; known: {', '.join(LEVELS)}")
    return list(dict.fromkeys(levels))


def quantize(source: Path, destination: Path, level: str, threads: int | None = None) -> Path:
    """Quantize `source` (an F16/F32 GGUF) to `destination` at `level`."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LEVELS[level][0]
    params.nthread = threads or os.cpu_count() or 1
    # llama.cpp logs every tensor through llama-cpp-python's logger; keep only its errors.
    llama_logger = logging.getLogger("llama-cpp-python")
    level_before = llama_logger.level
    llama_logger.setLevel(logging.ERROR)
    try:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(destination).encode(), params)
    finally:
        llama_logger.setLevel(level_before)
    if status != 0 or not destination.is_file():
        raise QuantizeError(f"llama_model_quantize to {level} failed with status {status}")
    return destination


def tensor_types(path: Path, level: str) -> TensorTypes:
    """Which types the weights of a GGUF actually have (1-D norms and biases stay F32 by design)."""
    reader = gguf.GGUFReader(str(path), "r")
    main = LEVELS[level][1]
    weights = {t.name: t.tensor_type.name for t in reader.tensors if len(t.shape) >= 2}
    return TensorTypes(
        level=level,
        main_type=main,
        counts=dict(Counter(weights.values())),
        other={name: kind for name, kind in weights.items() if kind != main},
    )
