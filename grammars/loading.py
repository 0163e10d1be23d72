"""Load a catalogue from what a user points the CLI at.

- `tools.json`: OpenAI `tools` JSON, a legacy `functions` list, or a dict holding either;
- `tools.py` or `package.module`: a Python module; its `TOOLS` list if it has one, else the
  Pydantic models defined in it, else its public functions (definition order);
- `package.module:NAME`: one attribute of a module (a list of tools, or a Catalogue).

The kind is chosen from the spec's spelling alone, never by trying: a `.json` suffix (any case)
is read as data, a `.py` suffix (any case) is imported from that file, any other existing file or
path-like spec is refused, and only a dotted name is imported as a module. Importing runs the
module's code, so a spec meant as data must never fall through to an import.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from .catalogue import Catalogue
from .errors import CatalogueError

# `package.module` or `package.module:NAME`: Python identifiers, nothing a file path would hold.
_MODULE_SPEC = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*(?::[A-Za-z_]\w*)?", re.ASCII)
_SEPARATORS = {"/", "\\", os.sep, os.altsep or "/"}


def load_catalogue(spec: str | Path) -> Catalogue:
    text = str(spec)
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix == ".json":
        if not path.is_file():
            raise CatalogueError(f"{path}: no such tools file")
        return Catalogue.from_json(path.read_text(encoding="utf-8"), where=str(path))
    if suffix == ".py":
        if not path.is_file():
            raise CatalogueError(f"{path}: no such tools module")
        return catalogue_from_module(_import_file(path), str(path))
    if isinstance(spec, Path) or path.is_file() or any(sep in text for sep in _SEPARATORS):
        problem = f"unknown tools file type {path.suffix!r}" if path.is_file() else "no such tools file"
        raise CatalogueError(
            f"{text}: {problem}; a tools file ends in .json (OpenAI tools JSON) or .py (Python)"
        )
    if not _MODULE_SPEC.fullmatch(text):
        raise CatalogueError(
            f"{text}: not a tools spec; give a .json or .py file, or a module as package.module[:NAME]"
        )
    module_name, _, attribute = text.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CatalogueError(
            f"{text}: not a .json/.py tools file and not an importable module ({exc})"
        ) from None
    if attribute:
        if not hasattr(module, attribute):
            raise CatalogueError(f"{text}: module {module_name} has no attribute {attribute!r}")
        return _as_catalogue(getattr(module, attribute), text)
    return catalogue_from_module(module, text)


def _import_file(path: Path) -> ModuleType:
    name = f"_toolroute_tools_{abs(hash(path.resolve()))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CatalogueError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Pydantic resolves forward references through sys.modules
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise CatalogueError(f"{path}: importing it failed: {type(exc).__name__}: {exc}") from exc
    return module


def _as_catalogue(value: Any, where: str) -> Catalogue:
    if isinstance(value, Catalogue):
        return value
    if isinstance(value, list | tuple):
        return Catalogue.from_tools(value)
    raise CatalogueError(f"{where}: expected a list of tools or a Catalogue, got {type(value).__name__}")


def catalogue_from_module(module: ModuleType, where: str) -> Catalogue:
    if hasattr(module, "TOOLS"):
        return _as_catalogue(module.TOOLS, f"{where}:TOOLS")
    own = [v for v in vars(module).values() if getattr(v, "__module__", None) == module.__name__]
    models = [v for v in own if isinstance(v, type) and issubclass(v, BaseModel)]
    if models:
        return Catalogue.from_tools(models)
    functions = [v for v in own if inspect.isfunction(v) and not v.__name__.startswith("_")]
    if functions:
        return Catalogue.from_tools(functions)
    raise CatalogueError(f"{where}: defines no TOOLS list, Pydantic models or public functions")
