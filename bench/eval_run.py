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
from toolroute.runtime.thresholds import CALL_SCORES, CallThreshold, NoToolThreshold

from .reporting import (
    DataInfo,
    EvalDocument,
    ModelInfo,
    StoredRules,
    dump_json,
    error_cases,
    headline_rows,
    markdown,
    risk_coverage_plot,
    threshold_choice,
)
from .thresholds import apply_rules, curve, pick_call_threshold, pick_no_tool_threshold, summarize


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

    # No stored rule holds anything back while scoring: the sweeps see every call, and the file's
    # rules are applied afterwards to report the numbers with and without them.
    copy_rule = not getattr(args, "no_copy_rule", False)
    span_mass = getattr(args, "min_span_mass", None)
    required_mass = getattr(args, "min_required_span_mass", None)
    key_rule = getattr(args, "min_key_probability", None)
    name_focus = not getattr(args, "no_name_focus", False)
    router = Router.load(
        model, n_threads=args.threads, n_ctx=args.n_ctx, stored_thresholds=False, copy_rule=copy_rule,
        name_focus=name_focus,
        **({} if span_mass is None else {"min_span_mass": span_mass}),
        **({} if required_mass is None else {"min_required_span_mass": required_mass}),
        **({} if key_rule is None else {"min_key_probability": key_rule}),
    )  # fmt: skip
    try:
        examples = _examples(args.data, router.catalogue, args.limit)
        report, predictions = evaluate_router(router, examples, unconstrained=args.unconstrained)
        answers, note = _answers_gguf(router, examples)
        info = ModelInfo(
            path=str(model), kind="gguf", backend=BACKENDS["gguf"][args.unconstrained],
            constrained=not args.unconstrained, catalogue_sha256=router.catalogue.sha256,
            sha256=file_sha256(model), prompt_mode=router.metadata.prompt_mode,
            copied_arguments=[entry.key for entry in router.copy_rule.copied],
            cut_offs={
                "min_span_mass": router.copy_rule.min_span_mass,
                "min_required_span_mass": router.copy_rule.min_required_span_mass,
                "min_key_probability": router.min_key_probability,
            },
            name_focus=router.name_focus,
        )  # fmt: skip
        stored = StoredRules(
            min_confidence=router.metadata.threshold,
            call_threshold=router.metadata.call_rule,
            no_tool_threshold=router.metadata.no_tool_rule,
        )
        document = _document(args, info, report, examples, predictions, router.catalogue, stored)
        document.answers, document.answers_note = answers, note
        return document, router
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
    router = HfRouter(model, copy_rule=not getattr(args, "no_copy_rule", False))
    report, predictions = evaluate_run(router, examples, unconstrained=args.unconstrained)
    from .answer_eval import answer_run, followups

    answers = answer_run(router, examples)
    info = ModelInfo(
        path=str(model), kind="run", backend=BACKENDS["run"][args.unconstrained],
        constrained=not args.unconstrained, catalogue_sha256=router.catalogue.sha256,
        prompt_mode=router.manifest.prompt_mode,
    )  # fmt: skip
    document = _document(args, info, report, examples, predictions, router.catalogue)
    if answers is None and followups(examples):
        document.answers_note = _NOT_TRAINED.format(len(followups(examples)))
    document.answers = answers
    return document


_NOT_TRAINED = "The data has {} follow-ups, but the model was trained without answers: not scored."


def _answers_gguf(router: Any, examples: list[Any]) -> tuple[Any, str | None]:
    """The answer step's scores on the data's follow-ups (None, and why not, when there are none to score)."""
    from .answer_eval import answer_router, followups

    rows = followups(examples)
    if not rows:
        return None, None
    if not router.answers_trained:
        return None, _NOT_TRAINED.format(len(rows))
    return answer_router(router, examples), None


def _document(
    args: argparse.Namespace,
    info: ModelInfo,
    report: Any,
    examples: list[Any],
    predictions: list[Any],
    catalogue: Any,
    stored: StoredRules | None = None,
) -> EvalDocument:
    from .evaluate import gold_of

    golds = [gold_of(example) for example in examples]
    # Abstention first, then the call threshold on what abstention leaves (see thresholds.py).
    no_tool = pick_no_tool_threshold(golds, predictions, catalogue)
    abstained = apply_rules(predictions, no_tool_rule=no_tool.rule)
    with_stored = None
    if stored is not None and stored.any:
        ruled = apply_rules(
            predictions, stored.call_threshold, stored.no_tool_threshold, stored.min_confidence
        )
        with_stored = summarize(golds, ruled, catalogue)
    return EvalDocument(
        model=info,
        data=DataInfo(path=str(args.data), sha256=file_sha256(args.data), examples=len(examples)),
        report=report,
        threshold=threshold_choice(report, args.max_risk),
        call_threshold=pick_call_threshold(golds, abstained, catalogue, args.max_risk),
        no_tool_threshold=no_tool,
        risk_coverage_by_score={score: curve(golds, predictions, catalogue, score) for score in CALL_SCORES},
        stored_rules=stored,
        without_rules=summarize(golds, predictions, catalogue),
        with_stored_rules=with_stored,
        errors=error_cases(golds, predictions, catalogue),
    )


def write_rules(model: Path, router: Any, call: CallThreshold, no_tool: NoToolThreshold | None) -> None:
    """Rewrite the router file with the picked rules (atomic; its .sha256 too). A name-probability
    threshold goes where format 1 kept it (`toolroute.min_confidence`); the other call scores in
    `toolroute.call_threshold`; abstention in `toolroute.no_tool_threshold` (cleared when none)."""
    from toolroute.export.embed import publish_router_gguf
    from toolroute.runtime.router_file import FORMAT_VERSION

    name = call.score == "name_probability"
    metadata = router.metadata.model_copy(
        update={
            "format_version": FORMAT_VERSION,
            "min_confidence": repr(call.value) if name else None,
            "call_threshold": None if name else call.model_dump_json(),
            "no_tool_threshold": None if no_tool is None else no_tool.model_dump_json(),
        }
    )
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
                call = document.call_threshold.rule
                if call is None:
                    print(
                        f"toolroute eval: no threshold keeps silent errors at or below {args.max_risk:.1%}; "
                        "the file is unchanged",
                        file=sys.stderr,
                    )
                    status = 1
                else:
                    write_rules(model, router, call, document.no_tool_threshold.rule)
                    document.written_to = str(model)
                    if call.score == "name_probability":
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
    choice, call = document.threshold, document.call_threshold
    if call.rule is not None:
        rows.append(
            (f"call threshold for <= {choice.max_silent_error_rate:.0%} silent errors",
             f"{call.rule.score} >= {call.rule.value:.4f} (coverage {call.coverage:.0%})")
        )  # fmt: skip
    if document.no_tool_threshold.rule is not None:
        rule = document.no_tool_threshold.rule
        rows.append(("abstention (picked on these rows)", f"{rule.score} {rule.value:.4f}"))
    for label, summary in (
        ("without rules", document.without_rules),
        ("with the file's rules", document.with_stored_rules),
    ):
        if summary is not None:
            false_calls = (
                "n/a" if summary.false_tool_call_rate is None else f"{summary.false_tool_call_rate:.1%}"
            )
            rows.append(
                (label, f"dispatched {summary.coverage:.1%}, silent errors {summary.silent_error_rate:.1%}, "
                 f"false calls {false_calls}")
            )  # fmt: skip
    if (answers := document.answers) is not None:
        rows.append(
            (f"answers ({answers.rows} follow-ups)",
             f"faithful {_pct(answers.faithful_rate)}, coverage {_pct(answers.coverage_mean)}, "
             f"ROUGE-L {answers.rouge_l_mean or 0:.3f}, p50 {answers.latency_ms_p50 or 0:.0f} ms")
        )  # fmt: skip
    elif document.answers_note:
        rows.append(("answers", document.answers_note))
    width = max(len(name) for name, _ in rows)
    lines = [f"{document.model.path} on {document.data.path} ({document.data.examples} examples)"]
    lines += [f"  {name.ljust(width)}  {value}" for name, value in rows]
    lines.append(f"report: {out / 'eval.md'}, {out / 'eval.json'}")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"
