"""How long crafted tool schemas take to be normalised (or refused): issue #11, item 1.

    python -m toolroute.bench.crafted_schemas [--timeout SECONDS]

Each case is a small OpenAI `tools` list built to make schema normalisation explode: `$defs`
chains where every level refers to the next twice (the output doubles per level), wide `anyOf`
lists (de-duplication), and deeply nested `items` (recursion: 900 levels still parse as JSON,
50,000 do not). Each case runs in its own process
with a time limit, through `Catalogue.from_json` (what a tools file or a request body goes
through); the table says how long it took and whether the catalogue was built or refused.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue as queue_module
import time
from collections.abc import Callable
from typing import Any

from toolroute.grammars import Catalogue


def _tool(parameters: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": "crafted", "parameters": parameters}}]


def double_ref_chain(levels: int) -> list[dict[str, Any]]:
    """`$defs` L0..Ln where each level's two properties both refer to the next level."""
    defs: dict[str, Any] = {f"L{levels}": {"type": "string"}}
    for level in range(levels):
        ref = {"$ref": f"#/$defs/L{level + 1}"}
        defs[f"L{level}"] = {"type": "object", "properties": {"a": ref, "b": ref}, "required": ["a", "b"]}
    return _tool({"type": "object", "properties": {"x": {"$ref": "#/$defs/L0"}}, "$defs": defs})


def wide_any_of(branches: int) -> list[dict[str, Any]]:
    """One property whose `anyOf` lists `branches` distinct constants."""
    return _tool({"type": "object", "properties": {"x": {"anyOf": [{"const": i} for i in range(branches)]}}})


def deep_items(depth: int) -> list[dict[str, Any]]:
    """An array of arrays of ... `depth` levels deep (built without recursion)."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return _tool({"type": "object", "properties": {"x": schema}})


def deep_items_json(depth: int) -> str:
    """The same as `deep_items`, as JSON text (json.dumps itself would recurse too deep)."""
    inner = '{"type":"array","items":' * depth + '{"type":"string"}' + "}" * depth
    return json.dumps(_tool({"type": "object", "properties": {"x": {}}})).replace("{}", inner, 1)


CASES: dict[str, Callable[[], str]] = {
    "double $ref chain, 14 levels": lambda: json.dumps(double_ref_chain(14)),
    "double $ref chain, 28 levels": lambda: json.dumps(double_ref_chain(28)),
    "anyOf, 4,000 branches": lambda: json.dumps(wide_any_of(4_000)),
    "anyOf, 60,000 branches": lambda: json.dumps(wide_any_of(60_000)),
    "items nested 900 deep": lambda: deep_items_json(900),
    "items nested 50,000 deep": lambda: deep_items_json(50_000),
}


def _timed(build: Callable[[], Catalogue]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, outcome): the CPU time is what a shared, loaded machine does
    not inflate, so it is the number to hold against a budget."""
    start, cpu = time.perf_counter(), time.process_time()
    try:
        catalogue = build()
        outcome = f"built ({len(catalogue.to_json()):,} bytes of schema)"
    except Exception as exc:  # the point is to see what each input does, whatever it is
        outcome = f"{type(exc).__name__}: {str(exc)[-100:]}"
    return time.perf_counter() - start, time.process_time() - cpu, outcome


def _run(name: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    text = CASES[name]()
    Catalogue.from_json(json.dumps(_tool({"type": "object", "properties": {}})))  # imports, not timed
    seconds, cpu, outcome = _timed(lambda: Catalogue.from_json(text, where="crafted"))
    try:
        data = json.loads(text)
    except RecursionError:
        parsed = None
    else:  # what a server does with a request body it has already parsed
        _, parsed, _ = _timed(lambda: Catalogue.from_openai(data, where="crafted"))
    queue.put((seconds, cpu, parsed, outcome, len(text)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a case is stopped")
    args = parser.parse_args()
    print("| input | size | from_json (parse + build) wall | its CPU | from_openai (build) CPU | outcome |")
    print("|---|---|---|---|---|---|")
    for name in CASES:
        queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
        process = multiprocessing.Process(target=_run, args=(name, queue))
        process.start()
        try:
            seconds, cpu, parsed, outcome, size = queue.get(timeout=args.timeout)
        except queue_module.Empty:
            alive = process.is_alive()
            process.terminate()
            process.join()
            if alive:
                print(f"| {name} | | > {args.timeout:g} s | | | stopped |")
            else:
                print(f"| {name} | | | | | crashed (exit code {process.exitcode}) |")
            continue
        process.join()
        built = "(not JSON)" if parsed is None else f"{parsed * 1000:.1f} ms"
        timings = f"{seconds * 1000:.1f} ms | {cpu * 1000:.1f} ms | {built}"
        print(f"| {name} | {size:,} B | {timings} | {outcome} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
