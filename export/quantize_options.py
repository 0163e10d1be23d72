"""How an export quantizes, as options: light (pydantic only) so that the CLI can show them.

The defaults: the token embedding (SmolLM2's output head is tied to it) kept at Q8_0, and an
importance matrix from 64 training rows, kept in a level only where it brings the file closer to
F16 (`pick_imatrix`). Measured on the default base with customer-support rows
(BENCHMARKS.md, "Quantization"; `bench/quant_fidelity.py`): the matrix brings Q5_K_M to Q8_0's
fidelity to F16 and cuts Q4_K_M's KL by 41%; an F16 embedding gained little (KL 0.039 -> 0.035 at
Q4_K_M) for 26.5 MB more. A third default gives the weights llama.cpp would fall back to Q5_1
(Q5_K_M on a 576-wide base) Q5_0 instead: on the trained customer-support routers Q5_1 is what
made Q5_K_M the worst level (on the untuned base it is not). `QuantizeOptions.plain()` gives
llama.cpp's own choices.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

EmbeddingType = Literal["q8_0", "f16", "level"]
# "level": llama.cpp's own choice per level (what export did before these options existed).
EMBEDDING_TYPE_NAMES: tuple[str, ...] = ("q8_0", "f16", "level")
DEFAULT_EMBEDDING_TYPE: EmbeddingType = "q8_0"
DEFAULT_IMATRIX_ROWS = 64


class QuantizeOptions(BaseModel):
    """How every quantized level of an export is made (the F16 file is the converter's, untouched)."""

    token_embedding: EmbeddingType = DEFAULT_EMBEDDING_TYPE
    imatrix_rows: int = Field(default=DEFAULT_IMATRIX_ROWS, ge=0)  # training rows; 0: no imatrix
    # Weights llama.cpp falls back to Q5_1 (Q5_K with rows not a multiple of 256) made Q5_0 instead:
    # Q5_1 is what made Q5_K_M the worst level of the trained customer-support routers (`quantize.py`).
    replace_fallbacks: bool = True
    # Each level quantized with and without the importance matrix, and the file closer to F16 kept
    # (the mean NLL of F16's greedy outputs on the parity prompts, the run's eval rows): the matrix
    # helped the LoRA customer-support router at Q4_K_M and cost the fully fine-tuned one 7.6
    # points of exact calls (BENCHMARKS.md, "Full fine-tuning"), so neither choice is right for all.
    pick_imatrix: bool = True

    @classmethod
    def plain(cls) -> QuantizeOptions:
        """llama.cpp's defaults: no importance matrix, the embedding type left to the level, its fallbacks."""
        return cls(token_embedding="level", imatrix_rows=0, replace_fallbacks=False, pick_imatrix=False)
