"""`toolroute data ...`: check, split, sample, render and import training data (no torch needed).

The train stage is imported by each handler when it runs, never when the parser is built: every
`toolroute` command builds the whole parser, `route` and `serve` included.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from toolroute.grammars import Catalogue, PromptMode, load_catalogue
from toolroute.runtime.files import atomic_write_text

if TYPE_CHECKING:
    from toolroute.train.formats import ReadResult


def _catalogue(args: argparse.Namespace) -> Catalogue | None:
    return load_catalogue(args.tools) if args.tools else None


def _check(args: argparse.Namespace) -> int:
    from toolroute.train.check import check_data, format_report

    report = check_data(args.file, _catalogue(args), args.eval, args.union_tools)
    if args.json:
        print(json.dumps({**report.model_dump(), "ok": report.ok}, indent=2, ensure_ascii=False))
    else:
        print(format_report(report))
    return 0 if report.ok else 1


def _refuse_overwriting_input(args: argparse.Namespace) -> None:
    """`sample` and `augment` write new rows to `--out`; the input file is never modified."""
    if Path(args.out).resolve() == Path(args.file).resolve():
        raise ValueError(f"{args.out}: --out must differ from the input file (the input is never modified)")


def _read_valid(args: argparse.Namespace) -> ReadResult:
    from toolroute.train.formats import read_valid_examples

    return read_valid_examples(args.file, _catalogue(args), args.union_tools)


def _split(args: argparse.Namespace) -> int:
    from toolroute.train.split import stratified_split

    result = _read_valid(args)
    split = stratified_split(result.examples, args.eval_fraction, args.seed)
    for sources, out in ((split.train, args.train_out), (split.eval, args.eval_out)):
        atomic_write_text(out, "".join(result.lines[s] + "\n" for s in sources))
    print(f"train {len(split.train)} -> {args.train_out}; eval {len(split.eval)} -> {args.eval_out}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from toolroute.train.split import label_of, per_label

    _refuse_overwriting_input(args)
    result = _read_valid(args)
    chosen = per_label(result.examples, args.per_label, args.seed)
    # The rows as written (any format), so the sample trains exactly as the full file would.
    atomic_write_text(args.out, "".join(result.lines[example.source] + "\n" for example in chosen))
    labels = len({label_of(example) for example in chosen})
    drawn = f"{labels} labels, at most {args.per_label} each, seed {args.seed}"
    print(f"{len(chosen)} rows ({drawn}) -> {args.out}")
    return 0


def _sft(args: argparse.Namespace) -> int:
    from toolroute.runtime.base_models import base_gguf
    from toolroute.runtime.chat_template import ChatTemplate
    from toolroute.train.sft import router_prompt, sft_rows

    result = _read_valid(args)
    template = ChatTemplate.from_gguf(base_gguf(args.base))
    rows = sft_rows(result.examples, result.catalogue, router_prompt(result.catalogue, template, args.mode))
    text = "".join(
        json.dumps(row.model_dump(exclude_defaults=True), ensure_ascii=False) + "\n" for row in rows
    )
    if args.output:
        atomic_write_text(args.output, text)
        print(f"{len(rows)} rows -> {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _augment(args: argparse.Namespace) -> int:
    from toolroute.train.augment import augment_examples, format_counts, router_line
    from toolroute.train.formats import read_valid_examples

    _refuse_overwriting_input(args)
    result = _read_valid(args)
    catalogue = result.catalogue
    assert catalogue is not None  # set from the rows when not given, and there are rows
    held_out = read_valid_examples(args.eval, catalogue, args.union_tools).examples if args.eval else []
    augmentation = augment_examples(result.examples, catalogue, args.per_row, args.cap, args.seed, held_out)
    # The rows as written, then the new ones in the router format (with the catalogue when the
    # input's rows carried their own `tools`, so the file reads back without --tools).
    lines = [result.lines[example.source] for example in result.examples]
    lines += [router_line(example, catalogue, args.tools is None) for example in augmentation.added]
    atomic_write_text(args.out, "".join(line + "\n" for line in lines))
    print(format_counts(augmentation.counts), file=sys.stderr)
    print(json.dumps({"out": str(args.out), **augmentation.counts.model_dump()}, ensure_ascii=False))
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _scenario_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _import_hwu64(args: argparse.Namespace) -> int:
    from toolroute.train.hwu64 import format_report as format_hwu64_report
    from toolroute.train.hwu64 import import_hwu64

    print(format_hwu64_report(import_hwu64(Path(args.source), Path(args.out), args.scenarios)))
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="training data, JSONL (router, OpenAI tools or legacy functions format)")
    parser.add_argument(
        "--tools", help="the run's catalogue (.json, .py or module); else the rows' own `tools`"
    )
    parser.add_argument(
        "--union-tools", action="store_true", help="merge rows whose tools differ instead of failing"
    )


def register(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="check, split, render and import training data")
    data_commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    check = data_commands.add_parser("check", help="validate a data file and report what it holds")
    _common(check)
    check.add_argument("--eval", help="an eval file: also report its overlap with the training requests")
    check.add_argument("--json", action="store_true", help="machine-readable report")
    check.set_defaults(handler=_check)

    split = data_commands.add_parser("split", help="reproducible train/eval split, stratified by tool")
    _common(split)
    split.add_argument("--eval-fraction", type=float, default=0.2)
    split.add_argument("--seed", type=int, default=13)
    split.add_argument("--train-out", required=True)
    split.add_argument("--eval-out", required=True)
    split.set_defaults(handler=_split)

    sample = data_commands.add_parser(
        "sample", help="small-data training set: K rows per tool (no_tool rows: K per reason)"
    )
    _common(sample)
    sample.add_argument("--per-label", type=int, required=True, help="rows per label (K)")
    sample.add_argument("--seed", type=int, default=13, help="seed of the draw (13)")
    sample.add_argument("--out", required=True, help="where the sampled rows go (as written in FILE)")
    sample.set_defaults(handler=_sample)

    sft = data_commands.add_parser("sft", help="prompt/completion rows in the base model's chat template")
    _common(sft)
    sft.add_argument("--mode", choices=[m.value for m in PromptMode], default=PromptMode.compact.value)
    sft.add_argument("--base", default="default", help="'default' or a .gguf whose chat template to use")
    sft.add_argument("-o", "--output", help="write JSONL here (atomically) instead of stdout")
    sft.set_defaults(handler=_sft)

    augment = data_commands.add_parser(
        "augment", help="more rows for small data: other training values swapped into span arguments"
    )
    _common(augment)
    augment.add_argument("--out", required=True, help="the rows as given, then the new ones (JSONL)")
    augment.add_argument(
        "--per-row", type=_positive, default=2, help="new rows per source row at most (default 2)"
    )
    augment.add_argument("--cap", type=_positive, help="new rows in all at most (a seeded sample)")
    augment.add_argument(
        "--seed", type=int, default=13, help="the same seed gives the same rows (default 13)"
    )
    augment.add_argument("--eval", help="an eval file: no new request equals one of its requests")
    augment.set_defaults(handler=_augment)

    hwu64 = data_commands.add_parser(
        "import-hwu64", help="turn HWU64 into tools.json + train/valid/test JSONL"
    )
    hwu64.add_argument("source", help="hwu64.jsonl (one request a line: text, intent, fold, entities)")
    hwu64.add_argument("--out", required=True, metavar="DIR", help="directory for tools.json and *.jsonl")
    hwu64.add_argument(
        "--scenarios",
        type=_scenario_list,
        metavar="A,B,...",
        help="only these scenarios' intents become tools (e.g. alarm,iot); general_* stay no_tool",
    )
    hwu64.set_defaults(handler=_import_hwu64)
