"""Building the `toolroute` parser imports no stage it does not run.

Every command, `route` and `serve` included, builds the whole parser first, so a module-level
import in any `toolroute.cli.<stage>` module is paid by all of them (and, on the runtime install,
may not be there at all). Handlers import their stage when they run. The exceptions are the option
classes some flags are made from, the one definition of those flags: `train.config` and
`train.recipe` (`toolroute train`'s flags are `TrainConfig`'s fields) and
`export.quantize_options` (the quantization flags of `export` and `bench`), each held here to
pydantic and the standard library.
"""

from __future__ import annotations

import json
import subprocess
import sys

from toolroute.cli import EXTRA_OF_MODULE

# The stage modules the parser may load: the option classes above and their packages.
ALLOWED = {
    "toolroute.train",
    "toolroute.train.config",
    "toolroute.train.recipe",
    "toolroute.export",
    "toolroute.export.quantize_options",
}
STAGES = ("train", "export", "bench")
# Every module an extra exists for, and llama-cpp-python: loading the llama.cpp library is for a
# command that opens a model, not for parsing its arguments.
HEAVY = sorted({*EXTRA_OF_MODULE, "llama_cpp"})

PROBE = """
import json, sys
from toolroute.cli import build_parser
build_parser()
print(json.dumps(sorted(sys.modules)))
"""


def _stage(module: str) -> str | None:
    """`train` of `toolroute.train.config`; None for `toolroute` itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _modules_after_building_the_parser() -> set[str]:
    # A fresh interpreter: this test process has imported every stage already.
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_building_the_parser_loads_no_stage_and_no_heavy_package():
    loaded = _modules_after_building_the_parser()
    assert "toolroute.cli.train" in loaded and "toolroute.cli.bench" in loaded  # every command registered
    stages = {name for name in loaded if name.split(".")[0] == "toolroute" and _stage(name) in STAGES}
    assert stages <= ALLOWED, f"loaded while building the parser: {sorted(stages - ALLOWED)}"
    heavy = sorted(name for name in loaded if name.split(".")[0] in HEAVY)
    assert not heavy, f"heavy modules loaded while building the parser: {heavy}"
