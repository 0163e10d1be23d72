"""Where a route's time goes: per request, per catalogue, per router configuration.

    python -m toolroute.bench.latency breakdown [--catalogue customer-support hwu64-mid hwu64]
        [--router NAME=ROUTER.gguf ...] [--config LABEL[:key=value,...] ...] [--requests 40]
        [--threads 1] [--clock wall|cpu] [--naive] [--out results/latency]

Each request is routed twice by every configuration, interleaved request by request (the order
rotating), so that a change in a shared machine's load hits them alike: once plain (the latency an
app sees) and once under the timers of `latency_seams.py`, which split it into prompt rendering,
prompt evaluation, model decode steps, grammar masks, the greedy pick, forced-byte probing,
confidence branches, the call score, the copy rule and Python overhead, with counts (tokens,
steps, mask calls, bytes forced). `--clock cpu` times the routing thread's CPU time instead of
wall time: on a shared machine it moves far less with the load.
The two runs should write the same output (reported: the timers change nothing but the time).

Catalogues: customer support (3 tools, `examples/customer_support/eval.jsonl`), a mid-size HWU64
subset (`data/hwu64-mid`: the 8 intents of the `play` and `music` scenarios, their slots) and full
HWU64 (`data/hwu64`, 54 tools); the HWU64 requests are the test fold, spread evenly over the
file. Without `--router NAME=PATH` a catalogue runs on the untuned router built from the default
base (`router_files.py`) in prompt mode `none` (the mode the shipped recipes train in; a compact
prompt lists all 54 HWU64 tools in ~2,600 tokens), labelled "untuned". `--config` compares
`Router.load` and `Router.route` options in one run (`--config on --config off:fast_forward=false`,
`--config calls:route.no_tool=false`; values are JSON, else strings). The untuned routers carry the
copied arguments a training run would infer from the catalogue's training rows.

Each catalogue runs in a fresh process (its peak RSS is its own). Writes `breakdown.json` (every
request), `BREAKDOWN.md` (a table per catalogue) and `breakdown.png` (stacked bars) under
`--out`, atomically.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from toolroute.runtime.files import atomic_write_text
from toolroute.runtime.resources import peak_rss_mb

from .latency_report import BreakdownResults, CatalogueRun, ConfigRun, NaiveRun, markdown, write_results
from .latency_seams import Profiler, instrumented, required_categories
from .quant_bench import _machine
from .router_files import UNTUNED, untuned_router

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "results" / "latency"
WARMUP = 2
# The breakdown's clock: wall time (what a caller waits), or the CPU time of the routing thread,
# which a busy machine inflates far less (with one llama.cpp thread the model runs on that
# thread too: measured equal to the process's CPU time).
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
IMPORT_HWU64 = "toolroute data import-hwu64 ../shared/datasets/hwu64/hwu64.jsonl --out {out}"


class CatalogueSource(BaseModel):
    name: str
    tools: Path
    requests: Path
    train: Path  # the rows a training run of this catalogue infers copied arguments from
    about: str
    prepare: str | None = None  # the command that creates the files, if they are not in the repository


CATALOGUES = {
    source.name: source
    for source in (
        CatalogueSource(
            name="customer-support",
            tools=ROOT / "examples" / "customer_support" / "tools.py",
            requests=ROOT / "examples" / "customer_support" / "eval.jsonl",
            train=ROOT / "examples" / "customer_support" / "train.jsonl",
            about="customer support, the eval set",
        ),
        CatalogueSource(
            name="hwu64-mid",
            tools=ROOT / "data" / "hwu64-mid" / "tools.json",
            requests=ROOT / "data" / "hwu64-mid" / "test.jsonl",
            train=ROOT / "data" / "hwu64-mid" / "train.jsonl",
            about="HWU64, the `play` and `music` scenarios (8 intents, their slots), the test fold",
            prepare=IMPORT_HWU64.format(out="data/hwu64-mid") + " --scenarios play,music",
        ),
        CatalogueSource(
            name="hwu64",
            tools=ROOT / "data" / "hwu64" / "tools.json",
            requests=ROOT / "data" / "hwu64" / "test.jsonl",
            train=ROOT / "data" / "hwu64" / "train.jsonl",
            about="full HWU64 (every non-chit-chat intent), the test fold",
            prepare=IMPORT_HWU64.format(out="data/hwu64"),
        ),
    )
}


class RouterConfig(BaseModel):
    label: str
    options: dict[str, Any] = Field(default_factory=dict)  # Router.load keyword arguments
    route_options: dict[str, Any] = Field(default_factory=dict)  # Router.route keyword arguments


class WorkerSpec(BaseModel):
    catalogue: str
    router: Path
    router_label: str
    requests: Path
    limit: int
    threads: int
    configs: list[RouterConfig]
    naive: bool
    clock: Literal["wall", "cpu"] = "wall"


# -- one catalogue, in its own process ------------------------------------------------------------


def run_catalogue(spec: WorkerSpec, about: str) -> CatalogueRun:
    from toolroute.runtime.router import Router
    from toolroute.runtime.router_file import read_router_file
    from toolroute.train.formats import read_valid_examples

    from .evaluate import spread

    load_before = os.getloadavg()[0]
    catalogue = read_router_file(spec.router).catalogue
    examples = spread(read_valid_examples(spec.requests, catalogue).examples, spec.limit)
    routers, runs = [], []
    for config in spec.configs:
        _check_options(config)
        started = time.perf_counter()
        # A configuration may set its own `n_threads` (threads measured on and off in one run).
        router = Router.load(spec.router, **{"n_threads": spec.threads, **config.options})
        load_s = time.perf_counter() - started
        for example in examples[:WARMUP]:
            router.route(example.request, list(example.history) or None, **config.route_options)
        routers.append(router)
        runs.append(
            ConfigRun(
                label=config.label,
                options=config.options,
                route_options=config.route_options,
                load_s=load_s,
                required=sorted(required_categories(router)),
                plain_ms=[],
                plain_wall_ms=[],
                same_output=0,
                requests=[],
            )
        )
    clock = CLOCKS[spec.clock]
    profilers = [Profiler(clock) for _ in routers]
    for index, example in enumerate(_progress(examples, f"{spec.catalogue} ({spec.router_label})")):
        history = list(example.history) or None
        for offset in range(len(routers)):
            which = (index + offset) % len(routers)
            router, run, profiler = routers[which], runs[which], profilers[which]
            started = clock()
            plain = router.route(example.request, history, **run.route_options)
            run.plain_ms.append((clock() - started) * 1000.0)
            run.plain_wall_ms.append(plain.latency_ms)
            with instrumented(profiler):
                timed = router.route(example.request, history, **run.route_options)
            run.same_output += plain.raw == timed.raw
    for router, run, profiler in zip(routers, runs, profilers, strict=True):
        profiler.require(set(run.required))
        run.requests = profiler.requests
        router.close()
    rss = peak_rss_mb()
    naive = _naive_run(spec, examples) if spec.naive else None
    return CatalogueRun(
        catalogue=spec.catalogue,
        about=about,
        router=str(spec.router),
        router_label=spec.router_label,
        tools=len(catalogue.names),
        arguments=sum(len(tool.properties) for tool in catalogue.tools),
        texts=[example.request for example in examples],
        configs=runs,
        naive=naive,
        peak_rss_mb=rss,
        load_average=(load_before, os.getloadavg()[0]),
    )


def _check_options(config: RouterConfig) -> None:
    """Options `Router.load` / `Router.route` do not take fail before anything is loaded."""
    from toolroute.runtime.router import Router

    for method, given in ((Router.load, config.options), (Router.route, config.route_options)):
        known = set(inspect.signature(method).parameters) - {"self", "cls", "path", "text", "history"}
        if unknown := sorted(set(given) - known):
            raise SystemExit(
                f"--config {config.label}: Router.{method.__name__} takes no {', '.join(unknown)} "
                f"(it takes {', '.join(sorted(known))})"
            )


def _naive_run(spec: WorkerSpec, examples: Sequence[Any]) -> NaiveRun:
    from .measure import NaiveRunner

    with NaiveRunner(spec.router, spec.threads) as runner:
        for example in examples[:WARMUP]:
            runner.complete(example.request, example.history)
        done = [runner.complete(e.request, e.history) for e in _progress(examples, f"{spec.catalogue} naive")]
    return NaiveRun(
        latencies_ms=[d.latency_ms for d in done], completion_tokens=[d.completion_tokens for d in done]
    )


def _progress(items: Sequence[Any], description: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=description, leave=False, file=sys.stderr)


def _spawn(spec: WorkerSpec, about: str, scratch: Path) -> CatalogueRun:
    spec_file, result_file = scratch / f"{spec.catalogue}.spec.json", scratch / f"{spec.catalogue}.run.json"
    spec_file.write_text(json.dumps({"spec": spec.model_dump(mode="json"), "about": about}), encoding="utf-8")
    command = [sys.executable, "-m", "toolroute.bench.latency_breakdown", "--worker", str(spec_file)]
    subprocess.run([*command, "--result", str(result_file)], check=True)
    return CatalogueRun.model_validate_json(result_file.read_text(encoding="utf-8"))


# -- driver ------------------------------------------------------------------------------------


def parse_config(text: str) -> RouterConfig:
    """`LABEL` or `LABEL:key=value,...`: `Router.load` options, and `route.key=value` for
    `Router.route` ones (values as JSON where they parse, else strings)."""
    label, _, rest = text.partition(":")
    if not label:
        raise argparse.ArgumentTypeError(f"--config {text!r}: a label comes first (LABEL[:key=value,...])")
    options: dict[str, Any] = {}
    route_options: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise argparse.ArgumentTypeError(f"--config {text!r}: {item!r} is not key=value")
        target = route_options if key.startswith("route.") else options
        key = key.removeprefix("route.")
        try:
            target[key] = json.loads(value)
        except json.JSONDecodeError:
            target[key] = value
    return RouterConfig(label=label, options=options, route_options=route_options)


def _named_path(text: str) -> tuple[str, Path]:
    name, equals, path = text.partition("=")
    if not equals or name not in CATALOGUES:
        raise argparse.ArgumentTypeError(
            f"--router {text!r}: expected NAME=PATH with NAME in {', '.join(CATALOGUES)}"
        )
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"--router {text!r}: {path}: no such file")
    return name, Path(path)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m toolroute.bench.latency breakdown", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--catalogue", nargs="+", choices=list(CATALOGUES), default=list(CATALOGUES))
    parser.add_argument("--router", type=_named_path, action="append", default=[], metavar="NAME=PATH",
                        help="a router file for a catalogue (default: its untuned router)")  # fmt: skip
    parser.add_argument("--config", type=parse_config, action="append", metavar="LABEL[:key=value,...]",
                        help="Router.load (key=value) and Router.route (route.key=value) options to compare "
                             "(repeat; default: one 'default')")  # fmt: skip
    parser.add_argument("--requests", type=int, default=40, help="per catalogue, spread over the file")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads (default 1)")
    parser.add_argument("--prompt-mode", default="none",
                        help="of the untuned routers built here (default: the recipes' none)")  # fmt: skip
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall",
                        help="wall, or the routing thread's CPU time (steadier on a busy box)")  # fmt: skip
    parser.add_argument("--naive", action="store_true", help="also time create_chat_completion(grammar=...)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    configs = args.config or [RouterConfig(label="default")]
    if len({c.label for c in configs}) != len(configs):
        raise SystemExit("--config: each configuration needs its own label")
    given = dict(args.router)
    for name in args.catalogue:
        source = CATALOGUES[name]
        needed = [source.requests] + ([] if name in given else [source.tools, source.train])
        if missing := [str(p) for p in needed if not p.is_file()]:
            hint = f"; create with `{source.prepare}`" if source.prepare else ""
            raise SystemExit(f"{name}: {', '.join(missing)} not found{hint}")
    command = shlex.join(["python", "-m", "toolroute.bench.latency", "breakdown", *argv])
    runs = []
    with tempfile.TemporaryDirectory(prefix="toolroute-latency-") as folder:
        scratch = Path(folder)
        for name in args.catalogue:
            source = CATALOGUES[name]
            if name in given:
                router, label = given[name], given[name].name
            else:
                print(f"building the untuned {name} router from the default base", file=sys.stderr)
                target = scratch / f"{name}-untuned.gguf"
                router = untuned_router(source.tools, target, args.prompt_mode, source.train)
                label = UNTUNED
            spec = WorkerSpec(
                catalogue=name,
                router=router,
                router_label=label,
                requests=source.requests,
                limit=args.requests,
                threads=args.threads,
                configs=configs,
                naive=args.naive,
                clock=args.clock,
            )
            runs.append(_spawn(spec, source.about, scratch))
            if name not in given:
                router.unlink()
    results = BreakdownResults(
        command=command.strip(),
        machine=_machine(),
        threads=args.threads,
        clock=args.clock,
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        catalogues=runs,
    )
    write_results(results, args.out)
    print(markdown(results))
    print(f"wrote {args.out / 'BREAKDOWN.md'}, breakdown.json, breakdown.png", file=sys.stderr)
    return 0


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolroute.bench.latency_breakdown")
    parser.add_argument("--worker", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    data = json.loads(args.worker.read_text(encoding="utf-8"))
    run = run_catalogue(WorkerSpec.model_validate(data["spec"]), data["about"])
    atomic_write_text(args.result, run.model_dump_json() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1:]))
