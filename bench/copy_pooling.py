"""Pooled copy inference on and off, on the same trained weights: two router files to evaluate.

    python -m toolroute.bench.copy_pooling runs/NAME dist/NAME.q4_k_m.gguf --out DIR

Which arguments are copied is router metadata, decided from the training rows and never seen by
training itself, so one exported file re-embedded with the other decision is exactly what
training with it would have exported. Writes `DIR/NAME.pool-on.gguf` and `DIR/NAME.pool-off.gguf`
(`train/copied.py`: `decide_copied(..., pool=True|False)`, the rows as the run read them) and
prints how many arguments each copies; `toolroute eval` then scores both on the same rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from toolroute.export.embed import write_router_gguf
from toolroute.runtime.router_file import read_router_file
from toolroute.train.copied import DEFAULT_SHARE, copied_arguments, decide_copied
from toolroute.train.formats import read_valid_examples
from toolroute.train.run_dir import RunDir


def pooling_variants(run_path: Path, router: Path, out: Path) -> dict[str, Path]:
    run = RunDir(run_path)
    manifest = run.load_manifest()
    catalogue = manifest.load_catalogue()
    rows = read_valid_examples(manifest.data["train"].path, catalogue).examples
    metadata = read_router_file(router).metadata
    share = float(manifest.config.get("copy_share", DEFAULT_SHARE))
    files = {}
    for setting, pool in (("on", True), ("off", False)):
        copied = copied_arguments(decide_copied(rows, catalogue, share, pool=pool))
        variant = metadata.with_copied(copied)
        files[setting] = write_router_gguf(router, out / f"{manifest.name}.pool-{setting}.gguf", variant)
        print(f"pool {setting}: {len(copied)} copied arguments -> {files[setting]}")
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m toolroute.bench.copy_pooling", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("router", type=Path, help="a router file exported from RUN")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    pooling_variants(args.run, args.router, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
