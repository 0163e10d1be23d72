"""What `toolroute eval --model (runs/NAME | FILE.gguf) --data eval.jsonl` does: the evaluation report.

A GGUF is scored with the runtime (torch-free); a training run directory with the merged model
in transformers (`toolroute.bench.hf_eval`, needs the `train` extra). Writes `eval.json`,
`eval.md` and `risk_coverage.png` to `--out` (default: `FILE.eval/` beside a GGUF,
`runs/NAME/eval/` for a run; `-free` appended with `--unconstrained`) and prints the four numbers.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from toolroute.runtime.files import file_sha256

from .reporting import (
    DataInfo,
    EvalDocument,
    ModelInfo,
    dump_json,
    error_cases,
    headline_rows,
    markdown,
    risk_coverage_plot,
    threshold_choice,
)


def _examples(path: Path, catalogue: Any, limit: int | None) -> list[Any]:
    from toolroute.train.formats import read_valid_examples

    from .evaluate import spread

    return spread(read_valid_examples(path, catalogue).examples, limit)


# What produced the outputs, by model kind and whether generation was unconstrained.
BACKENDS = {
    "gguf": {
        False: "toolroute runtime (llama.cpp, GBNF, greedy)",
        True: "llama-cpp-python, free greedy generation",
    },
    "run": {
        False: "transformers + outlines (output JSON Schema), greedy",
        True: "transformers, free greedy generation",
    },
}


def default_out(model: Path, unconstrained: bool) -> Path:
    suffix = "-free" if unconstrained else ""
    if model.is_dir():
        return model / f"eval{suffix}"
    return model.with_name(model.name.removesuffix(".gguf") + f".eval{suffix}")


def evaluate_gguf(args: argparse.Namespace, model: Path) -> tuple[EvalDocument, Any]:
    from toolroute.runtime.router import Router

    from .evaluate import evaluate_router

    router = Router.load(model, n_threads=args.threads, n_ctx=args.n_ctx, min_confidence=0.0)
    try:
        examples = _examples(args.data, router.catalogue, args.limit)
        report, predictions = evaluate_router(router, examples, unconstrained=args.unconstrained)
        info = ModelInfo(
            path=str(model), kind="gguf", backend=BACKENDS["gguf"][args.unconstrained],
            constrained=not args.unconstrained, catalogue_sha256=router.catalogue.sha256,
            sha256=file_sha256(model), prompt_mode=router.metadata.prompt_mode,
        )  # fmt: skip
        return _document(args, info, report, examples, predictions, router.catalogue), router
    except BaseException:
        router.close()
        raise


def evaluate_run_dir(args: argparse.Namespace, model: Path) -> EvalDocument:
    # Without the train extra this raises ModuleNotFoundError; the CLI names the extra to install.
    from toolroute.train.run_dir import IncompleteRun

    from .hf_eval import HfRouter, evaluate_run, run_catalogue

    try:
        catalogue = run_catalogue(model)
    except IncompleteRun as exc:
        raise ValueError(str(exc)) from None
    examples = _examples(args.data, catalogue, args.limit)  # bad data fails before loading
    router = HfRouter(model)
    report, predictions = evaluate_run(router, examples, unconstrained=args.unconstrained)
    info = ModelInfo(
        path=str(model), kind="run", backend=BACKENDS["run"][args.unconstrained],
        constrained=not args.unconstrained, catalogue_sha256=router.catalogue.sha256,
        prompt_mode=router.manifest.prompt_mode,
    )  # fmt: skip
    return _document(args, info, report, examples, predictions, router.catalogue)


def _document(
    args: argparse.Namespace,
    info: ModelInfo,
    report: Any,
    examples: list[Any],
    predictions: list[Any],
    catalogue: Any,
) -> EvalDocument:
    from .evaluate import gold_of

    golds = [gold_of(example) for example in examples]
    return EvalDocument(
        model=info,
        data=DataInfo(path=str(args.data), sha256=file_sha256(args.data), examples=len(examples)),
        report=report,
        threshold=threshold_choice(report, args.max_risk),
        errors=error_cases(golds, predictions, catalogue),
    )


def write_threshold(model: Path, router: Any, threshold: float) -> None:
    """Rewrite the router file with `toolroute.min_confidence` (atomic; its .sha256 too)."""
    from toolroute.export.embed import publish_router_gguf

    metadata = router.metadata.model_copy(update={"min_confidence": repr(threshold)})
    router.close()  # llama.cpp maps the file; let go of it before it is replaced
    publish_router_gguf(model, model, metadata)


def run_eval(args: argparse.Namespace) -> int:
    """`toolroute eval`: score, write the reports, print the summary; the exit status."""
    model = Path(args.model)
    if not model.exists():
        raise FileNotFoundError(f"{model}: no such run directory or GGUF file")
    if not args.data.is_file():
        raise FileNotFoundError(f"{args.data}: no such data file")
    if args.pick_threshold and (args.unconstrained or model.is_dir()):
        raise ValueError("--pick-threshold needs a router GGUF evaluated with its grammar (its confidence)")
    if args.pick_threshold:
        # Before minutes of evaluation: rewriting the GGUF needs the `gguf` package (train extra);
        # without it this raises ModuleNotFoundError and the CLI names the extra.
        import toolroute.export.embed  # noqa: F401
    status = 0
    if model.is_dir():
        document = evaluate_run_dir(args, model)
    else:
        document, router = evaluate_gguf(args, model)
        try:
            if args.pick_threshold:
                if document.threshold.threshold is None:
                    print(
                        f"toolroute eval: no threshold keeps silent errors at or below {args.max_risk:.1%}; "
                        "the file is unchanged",
                        file=sys.stderr,
                    )
                    status = 1
                else:
                    write_threshold(model, router, document.threshold.threshold)
                    document.threshold.written_to = str(model)
        finally:
            router.close()
    out = Path(args.out) if args.out else default_out(model, args.unconstrained)
    _write(document, out)
    print(_summary(document, out))
    return status


def _write(document: EvalDocument, out: Path) -> None:
    from toolroute.runtime.files import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "eval.json", dump_json(document))
    atomic_write_text(out / "eval.md", markdown(document))
    if not risk_coverage_plot(document, out / "risk_coverage.png"):
        print("toolroute eval: matplotlib is not installed: no risk-coverage plot", file=sys.stderr)


def _summary(document: EvalDocument, out: Path) -> str:
    report = document.report
    rows = [*headline_rows(report), ("silent-error rate", f"{report.silent_error_rate * 100:.1f}%")]
    if report.slot_f1 is not None:
        rows.append(("slot F1", f"{report.slot_f1:.3f}"))
    if report.latency_ms_p50 is not None:
        rows.append(("latency p50 / p95 (ms)", f"{report.latency_ms_p50:.0f} / {report.latency_ms_p95:.0f}"))
    choice = document.threshold
    if choice.threshold is not None:
        rows.append(
            (f"threshold for <= {choice.max_silent_error_rate:.0%} silent errors",
             f"{choice.threshold:.4f} (coverage {choice.coverage:.0%})")
        )  # fmt: skip
    width = max(len(name) for name, _ in rows)
    lines = [f"{document.model.path} on {document.data.path} ({document.data.examples} examples)"]
    lines += [f"  {name.ljust(width)}  {value}" for name, value in rows]
    lines.append(f"report: {out / 'eval.md'}, {out / 'eval.json'}")
    return "\n".join(lines)
