"""`toolroute export`: a finished training run -> self-contained router GGUFs.

merge (LoRA into the base) -> convert (llama.cpp's converter, F16) -> importance matrix (the run's
training rows through the merged model) -> quantize (in-process; `QuantizeOptions`) -> embed the
router metadata -> check (tokenizer ids, greedy parity). Every file is written under a
temporary name and renamed when complete, with a `.sha256` beside it; the working directory is
removed at the end, so an interrupted export leaves nothing that looks finished.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from toolroute.grammars import GrammarOptions
from toolroute.runtime.chat_template import ChatTemplate, RouterPrompt
from toolroute.runtime.files import atomic_write_text
from toolroute.runtime.router_file import RouterMetadata
from toolroute.train.bases import Base
from toolroute.train.copied import copied_arguments
from toolroute.train.formats import read_valid_examples
from toolroute.train.run_dir import RunDir, RunManifest

from .converter import convert
from .embed import publish_router_gguf
from .imatrix import ImportanceMatrix, compute_imatrix, gguf_weight_names
from .merge import merge_run
from .parity import (
    TOKENIZER_PROBE_REQUEST,
    Greedy,
    agreement,
    gguf_greedy,
    gguf_reference_nll,
    hf_agrees,
    token_ids,
)
from .quantize import TensorTypes, quantize, same_weights, tensor_types
from .quantize_options import QuantizeOptions


class ImatrixPick(BaseModel):
    """A level made with and without the importance matrix, and which file was kept."""

    kept_imatrix: bool
    nll_with: float  # mean NLL per token of F16's greedy outputs on the parity prompts
    nll_without: float
    prompts: int


class ExportedFile(BaseModel):
    level: str
    path: str
    size_bytes: int
    sha256: str
    seconds: float
    tensor_types: TensorTypes
    parity_with_f16: float | None = None
    imatrix_pick: ImatrixPick | None = None  # None: not picked (no matrix, no prompts, same weights)


class ImatrixSummary(BaseModel):
    rows: int  # training rows run through the merged model
    tokens: int
    tensors: int  # weights it covers
    seconds: float


class ExportReport(BaseModel):
    run: str
    quantization: QuantizeOptions
    imatrix: ImatrixSummary | None
    files: list[ExportedFile]
    seconds: dict[str, float]
    tokenizer_matches_base: bool
    parity_prompts: int
    parity_hf_vs_f16: float | None
    parity_mismatches: list[dict[str, str]]


def router_metadata(manifest: RunManifest, manifest_sha256: str, options: GrammarOptions) -> RouterMetadata:
    return RouterMetadata.build(
        manifest.load_catalogue(),
        prompt_mode=manifest.prompt_mode,
        system_prompt=manifest.system_prompt,
        chat_template=manifest.chat_template,
        completion_suffix=manifest.completion_suffix,
        base=manifest.base.model_dump_json(),
        manifest_sha256=manifest_sha256,
        options=options,
        copied=copied_arguments(manifest.copied_arguments),
        answer_rows=manifest.answer_rows,
    )


def _parity_prompts(manifest: RunManifest, template: ChatTemplate, count: int) -> list[str]:
    split = manifest.data.get("eval") or manifest.data["train"]
    # The split as training read it: a row that no longer reads (the file edited since) stops the
    # export naming its file and line, rather than quietly comparing fewer prompts.
    examples = read_valid_examples(split.path, manifest.load_catalogue()).examples[:count]
    prompt = RouterPrompt(chat_template=template, system_prompt=manifest.system_prompt)
    return [prompt.render(e.request, e.history) for e in examples]


def _imatrix_rows(manifest: RunManifest, template: ChatTemplate, count: int) -> list[str]:
    """`count` training rows spread evenly over the train split, as trained: prompt + completion."""
    catalogue = manifest.load_catalogue()
    examples = read_valid_examples(manifest.data["train"].path, catalogue).examples  # as `_parity_prompts`
    if count < len(examples):
        examples = [examples[index * len(examples) // count] for index in range(count)]
    prompt = RouterPrompt(chat_template=template, system_prompt=manifest.system_prompt)
    return [
        prompt.render(e.request, e.history) + prompt.completion(e.target.canonical(catalogue))
        for e in examples
    ]


def run_imatrix(
    merged: Any, tokenizer: Any, manifest: RunManifest, template: ChatTemplate, f16: Path, rows: int
) -> ImportanceMatrix:
    import gguf

    reader = gguf.GGUFReader(str(f16), "r")
    architecture = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    assert architecture is not None  # the converter always writes it
    names = gguf_weight_names(merged, architecture.contents(), {t.name for t in reader.tensors})
    texts = _imatrix_rows(manifest, template, rows)
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    return compute_imatrix(merged, ids, names, dataset=f"{manifest.name} train rows ({len(ids)})")


def _quantize_level(
    f16: Path,
    work: Path,
    level: str,
    quantization: QuantizeOptions,
    imatrix: ImportanceMatrix | None,
    reference: list[Greedy],
) -> tuple[Path, ImatrixPick | None]:
    """One quantized level: with the importance matrix, and, when the options pick, also without it,
    keeping the file whose teacher-forced NLL of F16's greedy outputs is lower (ties: the matrix)."""
    make = functools.partial(
        quantize,
        token_embedding=quantization.token_embedding,
        replace_fallbacks=quantization.replace_fallbacks,
    )
    weighted = make(f16, work / f"{level}.gguf", level, imatrix=imatrix)
    if imatrix is None or not quantization.pick_imatrix or not reference:
        return weighted, None
    plain = make(f16, work / f"{level}.plain.gguf", level, imatrix=None)
    if same_weights(weighted, plain):  # a level llama.cpp rounds without the matrix (Q8_0)
        plain.unlink()
        return weighted, None
    nll_with, nll_without = gguf_reference_nll(weighted, reference), gguf_reference_nll(plain, reference)
    kept = nll_with <= nll_without
    (plain if kept else weighted).unlink()
    pick = ImatrixPick(
        kept_imatrix=kept,
        nll_with=round(nll_with, 5),
        nll_without=round(nll_without, 5),
        prompts=len(reference),
    )
    return (weighted if kept else plain), pick


def options_for_run(quantization: QuantizeOptions, manifest: RunManifest) -> QuantizeOptions:
    """A quantization-aware run (`quant_aware`) was trained against llama.cpp's plain rounding, so
    its levels are made without the importance matrix, unless the options insist on it
    (`--always-imatrix`, i.e. no pick). The pick left it out on the quant-aware customer-support
    router (NLL 0.0144 without, 0.0206 with); where no pick runs (`--parity-prompts 0`), the matrix
    cost a quant-aware HWU64 router 0.8 points of tool accuracy (BENCHMARKS.md,
    "Quantization-aware fine-tuning")."""
    if manifest.config.get("quant_aware") and quantization.pick_imatrix and quantization.imatrix_rows:
        return quantization.model_copy(update={"imatrix_rows": 0})
    return quantization


def export_run(
    run_path: Path,
    levels: list[str],
    out_dir: Path,
    parity_prompts: int = 40,
    options: GrammarOptions | None = None,
    quantization: QuantizeOptions | None = None,
) -> ExportReport:
    import torch

    quantization = quantization or QuantizeOptions()
    run = RunDir(run_path)
    manifest = run.load_manifest()
    quantization = options_for_run(quantization, manifest)
    manifest_sha256 = hashlib.sha256(run.manifest_path.read_bytes()).hexdigest()
    metadata = router_metadata(manifest, manifest_sha256, options or GrammarOptions())
    template = ChatTemplate(template=manifest.chat_template, bos_token="", eos_token="")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / f".work-{manifest.name}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    seconds: dict[str, float] = {}
    try:
        started = time.perf_counter()
        cuda = torch.cuda.is_available()
        merged, tokenizer = merge_run(
            run, manifest, work / "merged", torch.bfloat16 if cuda else torch.float32
        )
        seconds["merge"] = round(time.perf_counter() - started, 2)

        started = time.perf_counter()
        f16 = convert(work / "merged", work / "f16.gguf", "f16")
        seconds["convert_f16"] = round(time.perf_counter() - started, 2)

        imatrix: ImportanceMatrix | None = None
        if quantization.imatrix_rows > 0 and any(level != "f16" for level in levels):
            started = time.perf_counter()
            imatrix = run_imatrix(merged, tokenizer, manifest, template, f16, quantization.imatrix_rows)
            seconds["imatrix"] = round(time.perf_counter() - started, 2)

        # F16's greedy outputs on the parity prompts: the reference every level is compared with,
        # and what the importance-matrix pick measures closeness to.
        started = time.perf_counter()
        prompts = _parity_prompts(manifest, template, parity_prompts) if parity_prompts else []
        reference = gguf_greedy(f16, prompts, 96) if prompts else []
        seconds["parity"] = round(time.perf_counter() - started, 2)

        files: list[ExportedFile] = []
        for level in levels:
            started = time.perf_counter()
            pick = None
            if level == "f16":
                source = f16  # the converter's file: nothing to quantize
            else:
                source, pick = _quantize_level(f16, work, level, quantization, imatrix, reference)
            destination = out_dir / f"{manifest.name}.{level}.gguf"
            digest = publish_router_gguf(source, destination, metadata)
            elapsed = round(time.perf_counter() - started, 2)
            seconds[level] = elapsed
            files.append(
                ExportedFile(
                    level=level, path=str(destination), size_bytes=destination.stat().st_size, sha256=digest,
                    seconds=elapsed, tensor_types=tensor_types(destination, level), imatrix_pick=pick,
                )
            )  # fmt: skip

        probe = RouterPrompt(chat_template=template, system_prompt=manifest.system_prompt).render(
            TOKENIZER_PROBE_REQUEST
        )
        base = Base.resolve(manifest.base.spec)
        base_ids = (
            token_ids(Path(base.location), probe)
            if base.kind == "gguf"
            else tokenizer(probe, add_special_tokens=False)["input_ids"]
        )
        tokenizer_ok = token_ids(f16, probe) == base_ids

        started = time.perf_counter()
        greedy = {
            f.level: reference if f.level == "f16" else gguf_greedy(Path(f.path), prompts, 96) for f in files
        }
        verdicts = hf_agrees(merged, reference) if prompts else []
        for file in files:
            if prompts:
                file.parity_with_f16 = agreement(
                    [g.text for g in greedy[file.level]], [g.text for g in reference]
                )
        seconds["parity"] += round(time.perf_counter() - started, 2)
        mismatches = [
            {"prompt_tail": p[-120:], "gguf_f16": r.text}
            for p, r, same in zip(prompts, reference, verdicts, strict=True)
            if not same
        ]
        imatrix_summary = (
            ImatrixSummary(
                rows=imatrix.texts,
                tokens=imatrix.tokens,
                tensors=len(imatrix.values),
                seconds=seconds["imatrix"],
            )
            if imatrix
            else None
        )
        report = ExportReport(
            run=manifest.name,
            quantization=quantization,
            imatrix=imatrix_summary,
            files=files,
            seconds=seconds,
            tokenizer_matches_base=tokenizer_ok,
            parity_prompts=len(prompts),
            parity_hf_vs_f16=sum(verdicts) / len(verdicts) if verdicts else None,
            parity_mismatches=mismatches[:10],
        )
        atomic_write_text(out_dir / f"{manifest.name}.export.json", report.model_dump_json(indent=2) + "\n")
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def format_report(report: ExportReport) -> str:
    timing = report.seconds
    lines = [
        f"export of {report.run}: merge {timing.get('merge')} s, convert {timing.get('convert_f16')} s, "
        f"parity {timing.get('parity', 0)} s",
        f"tokenizer ids equal to the base's: {'yes' if report.tokenizer_matches_base else 'NO'}",
        f"quantization: token embedding {report.quantization.token_embedding}, importance matrix "
        + (
            f"from {report.imatrix.rows} training rows ({report.imatrix.tokens} tokens, "
            f"{report.imatrix.tensors} weights, {report.imatrix.seconds} s)"
            if report.imatrix
            else "none"
        ),
    ]
    if report.parity_hf_vs_f16 is not None:
        lines.append(
            f"greedy parity, merged HF vs GGUF F16: {report.parity_hf_vs_f16:.1%} of {report.parity_prompts}"
        )
    lines.append(
        "| level | size MB | seconds | agrees with F16 | token embedding | tensors not at the main type |"
    )
    lines.append("|---|---:|---:|---:|---|---|")
    for file in report.files:
        other = ", ".join(
            f"{k} {v}" for k, v in file.tensor_types.counts.items() if k != file.tensor_types.main_type
        )
        if replaced := file.tensor_types.replaced_fallbacks:
            other += f" ({replaced} at Q5_0 in place of llama.cpp's Q5_1 fallback)"
        parity = "" if file.parity_with_f16 is None else f"{file.parity_with_f16:.1%}"
        lines.append(
            f"| {file.level} | {file.size_bytes / 1e6:.1f} | {file.seconds} | {parity} | "
            f"{file.tensor_types.token_embedding} | {other or 'none'} |"
        )
    for file in report.files:
        if pick := file.imatrix_pick:
            verdict = "kept" if pick.kept_imatrix else "left out"
            lines.append(
                f"{file.level}: importance matrix {verdict}: NLL of F16's outputs on {pick.prompts} "
                f"prompts {pick.nll_with:.4f} with it, {pick.nll_without:.4f} without"
            )
    return "\n".join(lines)
