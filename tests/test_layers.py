"""The layers point one way: grammars < runtime < train < export < bench < cli.

Every import of a `toolroute` module, at the top of a file or inside a function, is read from the
source's AST, so an import hidden inside a function cannot point upward either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["grammars", "runtime", "train", "export", "bench", "cli"]
RANK = {name: rank for rank, name in enumerate(LAYERS)}


def _modules(package: str) -> list[Path]:
    folder = ROOT / package
    if folder.is_dir():
        return sorted(p for p in folder.rglob("*.py") if "golden" not in p.parts)
    return [ROOT / f"{package}.py"]


def _imported_packages(path: Path, package: str, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, top-level toolroute package) for every toolroute import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    # The package a relative import starts from: `runtime/sub/x.py` -> ["runtime", "sub"].
    here = list(path.relative_to(root).parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = [node.module or ""]
            else:
                base = here[: len(here) - (node.level - 1)] if node.level - 1 <= len(here) else []
                top = base[0] if base else (node.module or "").split(".")[0]
                names = [f"toolroute.{top}"]
        for name in names:
            parts = name.split(".")
            if parts[0] == "toolroute" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_no_module_imports_a_higher_layer(package):
    upward = [
        f"{path.relative_to(ROOT)}:{line} imports toolroute.{target}"
        for path in _modules(package)
        for line, target in _imported_packages(path, package)
        if target in RANK and RANK[target] > RANK[package]
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_the_check_sees_hidden_and_relative_upward_imports(tmp_path):
    (tmp_path / "runtime" / "sub").mkdir(parents=True)
    module = tmp_path / "runtime" / "sub" / "probe.py"
    module.write_text(
        "from .x import y\nfrom ..limits import z\nfrom ...train import t\n"
        "def f():\n    from toolroute.bench import metrics\n",
        encoding="utf-8",
    )
    found = _imported_packages(module, "runtime", root=tmp_path)
    assert sorted(found) == [(1, "runtime"), (2, "runtime"), (3, "train"), (5, "bench")]
