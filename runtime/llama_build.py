"""Whether the installed llama.cpp build can run a model on this machine without crashing the process.

llama-cpp-python builds llama.cpp from source with `-march=native`; on a CPU that reports Intel AMX
(Sapphire Rapids and later Xeons) that compiles in ggml's AMX matrix multiply, which the pinned
llama.cpp then uses for the quantized weights it has kernels for (the default base's Q4_1 among
them), and which kills the process with SIGSEGV on the first model step (`ldtilecfg` in
`ggml_backend_amx_mul_mat`; upstream ggml-org/llama.cpp#20824, a fix proposed in #26954: the tile
configuration can be optimised away, and only the thread that loads the model asks the kernel
for AMX state). Seen here on a 2-core Xeon VM: every route, and plain `Llama(...)(prompt)`,
crashed. A segfault takes a server down with every request in flight, so a build that compiled
it in is refused, naming the rebuild; `make setup` builds without it (`-mno-amx-*`).

The build's features are what llama.cpp itself reports (`llama_print_system_info`), read once.
"""

from __future__ import annotations

import re
import sys
from functools import cache

# Compiler flags that keep AMX out of a native x86-64 build: GCC and Clang let an explicit
# `-mno-<isa>` win over what `-march=native` implies, whatever the order.
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
# Features whose code in this llama.cpp crashes the process (see the module's docstring).
CRASHING_FEATURES = ("AMX_INT8",)


def rebuild_command() -> str:
    """The command that rebuilds the installed llama-cpp-python without AMX (pyproject pins the version)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        pinned = f"llama-cpp-python=={version('llama-cpp-python')}"
    except PackageNotFoundError:
        pinned = "llama-cpp-python"
    return (
        f'CFLAGS="{NO_AMX_FLAGS}" CXXFLAGS="{NO_AMX_FLAGS}" '
        f"pip install --no-cache-dir --force-reinstall --no-deps {pinned}"
        " (in this repository: rm -rf .whl .venv && make setup)"
    )


class LlamaBuildError(RuntimeError):
    """The installed llama.cpp was built with code that crashes on this machine."""


def build_features(system_info: str) -> dict[str, str]:
    """`llama_print_system_info`'s `NAME = value` pairs (the CPU backend's compiled-in features)."""
    return dict(re.findall(r"([A-Z0-9_]+) = ([^ |]+)", system_info))


def crashing_features(system_info: str) -> list[str]:
    """The features of `CRASHING_FEATURES` the build reports as compiled in."""
    features = build_features(system_info)
    return [name for name in CRASHING_FEATURES if features.get(name, "0") not in ("0", "")]


@cache
def _installed_system_info() -> str:
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", "replace")


def check_llama_build() -> None:
    """Raise `LlamaBuildError` naming the rebuild if the installed llama.cpp would crash here."""
    found = crashing_features(_installed_system_info())
    if found:
        raise LlamaBuildError(
            f"llama-cpp-python was built with {', '.join(found)} (llama.cpp reports "
            f"{', '.join(f'{name} = 1' for name in found)}): its AMX matrix multiply crashes the "
            "process on the first model step (ggml-org/llama.cpp#20824). Rebuild it without: "
            f"{rebuild_command()}"
        )


def main() -> int:
    """`python -m toolroute.runtime.llama_build`: exit 1 with the reason where the build would crash."""
    try:
        check_llama_build()
    except LlamaBuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print("llama.cpp build: no feature known to crash here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
