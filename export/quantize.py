"""Quantize a GGUF in-process with llama.cpp (`llama_model_quantize`), and report fallbacks.

Small models have tensor rows that k-quants cannot split into 256-wide blocks; llama.cpp then
quantizes those tensors to another type. The report lists, per output file, every 2-D tensor whose
type differs from the level's main type, read back from the file itself.

What keeps a router through quantization (`QuantizeOptions`):
- the token embedding, which the packaged bases tie to the output head (no `output.weight`), at a
  fixed type in every level (`token_embedding_type`; `output_tensor_type` too, for untied bases);
- an importance matrix from the run's own training rows (`imatrix.py`), so that rounding error
  lands where the router's inputs are small. Its size and dataset are written into the file under
  llama.cpp's own `quantize.imatrix.*` keys, so a file says how it was made.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
from collections import Counter
from pathlib import Path

import gguf
import llama_cpp
from pydantic import BaseModel

from toolroute.train.quant_aware import TOKEN_EMBEDDING

from .imatrix import KEY_CHUNKS, KEY_DATASET, KEY_ENTRIES, ImportanceMatrix
from .native_stderr import folded_stderr
from .quantize_options import EmbeddingType, QuantizeOptions

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


# The tied embedding's GGUF name is defined once, beside the other GGUF-to-transformers names.
OUTPUT = "output.weight"

EMBEDDING_TYPES: dict[str, int | None] = {
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "f16": llama_cpp.GGML_TYPE_F16,
    "level": None,
}


# llama.cpp gives a K-quant weight whose rows are not a multiple of 256 a 32-block type instead
# (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0). Q5_K's Q5_1 is what broke Q5_K_M on every trained
# router of the 576-wide default base: on the top-16 customer-support router's validation rows,
# no_tool for 69.5% of in-scope requests (exact call 0.287), while the same file with those 166
# weights at Q5_0 scored 0.738, above Q4_K_M's 0.726 (BENCHMARKS.md, "Q5_K_M's fallback"). The
# weights themselves round well at Q5_1 (relative error 0.012 against Q5_0's 0.039); the logits do
# not (0.37 against 0.14): the loss arises when llama.cpp computes with these Q5_1 weights, not in
# the rounding. On the *untuned* base Q5_1 with an imatrix is the closer of the two to F16 (KL 0.0070
# against 0.0352), so this is a choice for trained routers, which are what export makes.
FALLBACK_REPLACEMENTS: dict[str, str] = {"Q5_1": "Q5_0"}
K_BLOCK = 256
KEY_REPLACED_FALLBACKS = "quantize.toolroute.replaced_fallbacks"  # how many weights, when any
UNQUANTIZED = ("F32", "F16", "BF16")


class QuantizeError(RuntimeError):
    pass


class TensorTypes(BaseModel):
    level: str
    main_type: str
    counts: dict[str, int]  # tensor type -> number of tensors (2-D and up)
    other: dict[str, str]  # tensor name -> type, where it is not main_type
    token_embedding: str | None = None  # the token embedding's type (the output head too, when tied)
    output: str | None = None  # a separate output head's type; None when tied to the embedding
    imatrix_rows: int | None = None  # rows the importance matrix came from; None: quantized without
    replaced_fallbacks: int = 0  # weights given FALLBACK_REPLACEMENTS' type instead of llama.cpp's fallback


def parse_levels(text: str) -> list[str]:
    levels = [level.strip().lower() for level in text.split(",") if level.strip()]
    unknown = [level for level in levels if level not in LEVELS]
    if unknown or not levels:
        raise ValueError(f"unknown quantization level(s) {unknown}; known: {', '.join(LEVELS)}")
    return list(dict.fromkeys(levels))


def _imatrix_array(matrix: ImportanceMatrix) -> tuple[ctypes.Array, list[object]]:
    """The NULL-terminated `llama_model_imatrix_data` array, and the buffers it points into."""
    entries = (llama_cpp.llama_model_imatrix_data * (len(matrix.values) + 1))()
    keep: list[object] = []
    for entry, (name, values) in zip(entries, sorted(matrix.values.items()), strict=False):
        buffer = (ctypes.c_float * len(values))(*values.tolist())
        keep.append(buffer)
        entry.name, entry.data, entry.size = name.encode(), buffer, len(values)
    return entries, keep


def _imatrix_keys(matrix: ImportanceMatrix) -> list[tuple[str, int | str]]:
    """llama.cpp's own `quantize.imatrix.*` keys, which say what the matrix was made from."""
    return [
        (KEY_DATASET, matrix.dataset[:127]),
        (KEY_ENTRIES, len(matrix.values)),
        (KEY_CHUNKS, matrix.texts),
    ]


def _kv_array(values: list[tuple[str, int | str]]) -> ctypes.Array:
    """Keys as kv overrides, which quantization writes to the file."""
    overrides = (llama_cpp.llama_model_kv_override * (len(values) + 1))()  # zeroed key ends the list
    for override, (key, value) in zip(overrides, values, strict=False):
        override.key = key.encode()
        if isinstance(value, str):
            override.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            override.value.val_str = value.encode()[:127]
        else:
            override.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            override.value.val_i64 = value
    return overrides


def quantize(
    source: Path,
    destination: Path,
    level: str,
    threads: int | None = None,
    *,
    token_embedding: EmbeddingType = "level",
    imatrix: ImportanceMatrix | None = None,
    replace_fallbacks: bool = False,
    requantize: bool = False,
) -> Path:
    """Quantize `source` (an F16/F32 GGUF) to `destination` at `level`.

    `token_embedding` fixes the type of the token embedding and of a separate output head ("level"
    leaves both to llama.cpp); `imatrix` weighs each column's rounding error by its activations;
    `replace_fallbacks` gives the weights that llama.cpp fell back to a type in
    `FALLBACK_REPLACEMENTS` the replacement instead (a second pass that names every weight's type,
    `fallbacks_to_replace`), and leaves every other weight's type as llama.cpp chose it.
    `requantize`: the source may itself be quantized (only the types are wanted: `level_types`).
    """
    once = functools.partial(
        _quantize_once, source, destination, level, threads, token_embedding, imatrix, requantize=requantize
    )
    once({}, 0)
    if replace_fallbacks:
        forced, replaced = fallbacks_to_replace(destination, level)
        if forced:
            once(forced, replaced)
    return destination


def level_types(base: Path, level: str, options: QuantizeOptions | None = None) -> dict[str, str]:
    """The llama.cpp type each weight of `base` gets at `level` when export quantizes it with
    `options` (export's defaults): read back from the base quantized once into a temporary
    directory. The types depend on the tensors' names and shapes, not their values, so a quantized
    base file (the packaged GGUF) answers for the F16 file export will quantize. Quantization-aware
    training (`train/quant_aware.py`) rounds each weight to its type. An unknown level or a base
    that is not a GGUF is refused with a ValueError that says which."""
    import tempfile

    if level not in LEVELS:
        raise ValueError(f"quant_aware {level!r} is not an export level ({', '.join(LEVELS)})")
    if base.suffix != ".gguf":
        raise ValueError(f"quant_aware needs a GGUF base (its weights' types at {level}), not {base}")
    options = options or QuantizeOptions()
    with tempfile.TemporaryDirectory(prefix="toolroute-types-") as directory:
        destination = Path(directory) / f"base.{level}.gguf"
        quantize(
            base,
            destination,
            level,
            token_embedding=options.token_embedding,
            replace_fallbacks=options.replace_fallbacks,
            requantize=True,
        )
        reader = gguf.GGUFReader(str(destination), "r")
        types = _weight_types(reader)
        del reader  # its memory map must close before the directory goes
    return types


def fallbacks_to_replace(path: Path, level: str) -> tuple[dict[str, str], int]:
    """The types a second pass must force so that only the fallbacks change, and how many change.

    A fallback is a weight of a K-quant level whose rows are not a multiple of 256 and whose type
    `FALLBACK_REPLACEMENTS` replaces (at `q5_0`, llama.cpp picks Q5_1 for the first ffn_down
    weights on purpose; kept). Every other quantized weight is forced to the type it has now:
    llama.cpp skips its mixture rules for a forced weight, and those rules count the attn_v and
    ffn_down weights they see, so forcing only some would move the others' types.
    """
    if not LEVELS[level][1].endswith("_K"):
        return {}, 0
    reader = gguf.GGUFReader(str(path), "r")
    weights = [
        t for t in reader.tensors
        if len(t.shape) >= 2
        and t.name not in (TOKEN_EMBEDDING, OUTPUT)
        and t.tensor_type.name not in UNQUANTIZED
    ]  # fmt: skip
    replaced = {
        t.name: FALLBACK_REPLACEMENTS[t.tensor_type.name]
        for t in weights
        if t.tensor_type.name in FALLBACK_REPLACEMENTS and int(t.shape[0]) % K_BLOCK
    }
    if not replaced:
        return {}, 0
    return {t.name: replaced.get(t.name, t.tensor_type.name) for t in weights}, len(replaced)


def _tensor_overrides(types: dict[str, str]) -> ctypes.Array:
    """`llama_model_tensor_override` entries, one anchored pattern per weight; a NULL pattern ends them."""
    overrides = (llama_cpp.llama_model_tensor_override * (len(types) + 1))()
    for override, (name, kind) in zip(overrides, sorted(types.items()), strict=False):
        override.pattern = f"^{re.escape(name)}$".encode()
        override.type = getattr(llama_cpp, f"GGML_TYPE_{kind}")
    return overrides


def _quantize_once(
    source: Path,
    destination: Path,
    level: str,
    threads: int | None,
    token_embedding: EmbeddingType,
    imatrix: ImportanceMatrix | None,
    types: dict[str, str],
    replaced: int,
    *,
    requantize: bool = False,
) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LEVELS[level][0]
    params.allow_requantize = requantize
    params.nthread = threads or os.cpu_count() or 1
    fixed = EMBEDDING_TYPES[token_embedding]
    if fixed is not None:
        params.token_embedding_type = fixed
        params.output_tensor_type = fixed
    keep: list[object] = []
    keys: list[tuple[str, int | str]] = []
    if imatrix is not None and imatrix.values:
        entries, keep = _imatrix_array(imatrix)
        keep.append(entries)
        keys += _imatrix_keys(imatrix)
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    if replaced:
        keys.append((KEY_REPLACED_FALLBACKS, replaced))
    if keys:
        overrides = _kv_array(keys)
        keep.append(overrides)
        params.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    if types:
        tensor_overrides = _tensor_overrides(types)
        keep.append(tensor_overrides)
        params.tt_overrides = ctypes.cast(
            tensor_overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override)
        )
    # llama.cpp logs every tensor through llama-cpp-python's logger; keep only its errors. Its
    # per-tensor fallback and override lines get past that level (some to the descriptor, some
    # through the callback), so `folded_stderr` drops them from both.
    llama_logger = logging.getLogger("llama-cpp-python")
    level_before = llama_logger.level
    llama_logger.setLevel(logging.ERROR)
    try:
        with folded_stderr():
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(destination).encode(), params)
    finally:
        llama_logger.setLevel(level_before)
    del keep  # the buffers had to outlive the call
    if status != 0 or not destination.is_file():
        raise QuantizeError(f"llama_model_quantize to {level} failed with status {status}")


def same_weights(first: Path, second: Path) -> bool:
    """Whether two GGUF files hold the same tensors, byte for byte (their metadata may differ)."""
    import numpy as np

    one, other = gguf.GGUFReader(str(first), "r"), gguf.GGUFReader(str(second), "r")
    if [t.name for t in one.tensors] != [t.name for t in other.tensors]:
        return False
    return all(
        a.tensor_type == b.tensor_type and np.array_equal(np.asarray(a.data), np.asarray(b.data))
        for a, b in zip(one.tensors, other.tensors, strict=True)
    )


def _weight_types(reader: gguf.GGUFReader) -> dict[str, str]:
    """Each weight's type (1-D norms and biases stay F32 by design and are left out)."""
    return {t.name: t.tensor_type.name for t in reader.tensors if len(t.shape) >= 2}


def tensor_types(path: Path, level: str) -> TensorTypes:
    """Which types the weights of a GGUF actually have (1-D norms and biases stay F32 by design)."""
    reader = gguf.GGUFReader(str(path), "r")
    main = LEVELS[level][1]
    weights = _weight_types(reader)
    chunks = reader.get_field(KEY_CHUNKS)
    replaced = reader.get_field(KEY_REPLACED_FALLBACKS)
    return TensorTypes(
        level=level,
        main_type=main,
        counts=dict(Counter(weights.values())),
        other={name: kind for name, kind in weights.items() if kind != main},
        token_embedding=weights.get(TOKEN_EMBEDDING),
        output=weights.get(OUTPUT),
        imatrix_rows=int(chunks.contents()) if chunks is not None else None,
        replaced_fallbacks=int(replaced.contents()) if replaced is not None else 0,
    )


def made_with(types: TensorTypes, options: QuantizeOptions) -> bool:
    """Whether a file's read-back types say it was quantized with `options` (an F16 file always was)."""
    if types.level == "f16":
        return True
    wanted = options.token_embedding.upper()
    embedding_ok = options.token_embedding == "level" or types.token_embedding == wanted
    output_ok = options.token_embedding == "level" or types.output in (None, wanted)
    # Presence, not the count: a run with fewer training rows than asked for uses them all. With the
    # pick, a file with the matrix and one without are both what the options make.
    picked = options.pick_imatrix and options.imatrix_rows > 0
    imatrix_ok = picked or (types.imatrix_rows is not None) == (options.imatrix_rows > 0)
    # At a K-quant level every weight of a replaced type is a fallback (llama.cpp picks Q5_1 on
    # purpose only at q4_0/q5_0), so a file still holding one was made without the replacement.
    replaceable = types.main_type.endswith("_K") and any(k in FALLBACK_REPLACEMENTS for k in types.counts)
    fallbacks_ok = not replaceable if options.replace_fallbacks else types.replaced_fallbacks == 0
    return embedding_ok and output_ok and imatrix_ok and fallbacks_ok
