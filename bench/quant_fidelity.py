"""How close each quantization of a model stays to its F16 file, on router rows, in minutes.

    python -m toolroute.bench.quant_fidelity --base default --tools T --train train.jsonl
        --data eval.jsonl [--mode none] [--rows 24] [--imatrix-rows 64] --json OUT.json

The model (a base spec, as for `toolroute train --base`: a packaged base, a .gguf or a Hugging Face
directory such as a merged run) is converted to F16 with llama.cpp's converter; its importance
matrix is computed from `--imatrix-rows` training rows exactly as export does; each level is
quantized with and without the two export options (`export/quantize_options.py`). For each file,
llama.cpp scores `--rows` eval rows (prompt + canonical completion, the run's prompt mode) teacher
forced, and the completion tokens are compared with F16's: top-1 agreement and the mean
KL(F16 || quantized). It needs no trained run, so it measures what the options do to the network
even before a router exists; `toolroute bench` measures what they do to routing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from toolroute.export.converter import convert
from toolroute.export.imatrix import ImportanceMatrix, compute_imatrix, gguf_weight_names
from toolroute.export.parity import log_softmax, teacher_forced_logits
from toolroute.export.quantize import parse_levels, quantize, tensor_types
from toolroute.export.quantize_options import QuantizeOptions
from toolroute.grammars import load_catalogue
from toolroute.runtime.chat_template import ChatTemplate
from toolroute.runtime.files import atomic_write_text
from toolroute.train.bases import Base
from toolroute.train.formats import read_valid_examples
from toolroute.train.sft import router_prompt

VARIANTS: dict[str, QuantizeOptions] = {
    "plain": QuantizeOptions.plain(),
    "embedding f16": QuantizeOptions(token_embedding="f16", imatrix_rows=0, replace_fallbacks=False),
    "embedding q8_0 + imatrix": QuantizeOptions(token_embedding="q8_0", replace_fallbacks=False),
    "embedding f16 + imatrix": QuantizeOptions(token_embedding="f16", replace_fallbacks=False),
    "default: q8_0 embedding + imatrix + Q5_0 fallback": QuantizeOptions(),
}


class Fidelity(BaseModel):
    level: str
    variant: str
    size_mb: float
    token_embedding: str | None
    top1_agreement: float  # completion tokens whose argmax equals F16's
    kl: float  # mean KL(F16 || quantized) over completion tokens, nats


class FidelityReport(BaseModel):
    base: str
    mode: str
    rows: int
    completion_tokens: int
    imatrix_rows: int
    imatrix_seconds: float
    results: list[Fidelity]


def _rows(path: Path, catalogue: Any, prompt: Any, count: int) -> list[tuple[str, str]]:
    examples = read_valid_examples(path, catalogue).examples
    if count < len(examples):
        examples = [examples[i * len(examples) // count] for i in range(count)]
    return [
        (prompt.render(e.request, e.history), prompt.completion(e.target.canonical(catalogue)))
        for e in examples
    ]


def _completion_logits(path: Path, rows: list[tuple[str, str]]) -> list[np.ndarray]:
    from llama_cpp import Llama

    llama = Llama(str(path), n_ctx=4096, logits_all=True, verbose=False)
    logits = []
    try:
        for prompt, completion in rows:
            prompt_ids = llama.tokenize(prompt.encode(), add_bos=False, special=True)
            completion_ids = llama.tokenize(completion.encode(), add_bos=False, special=True)
            logits.append(teacher_forced_logits(llama, prompt_ids, completion_ids))
    finally:
        llama.close()
    return logits


def compare(reference: list[np.ndarray], other: list[np.ndarray]) -> tuple[float, float]:
    """(top-1 agreement, mean KL(reference || other)) over every completion position."""
    agree = total = 0
    divergences = []
    for ref, out in zip(reference, other, strict=True):
        agree += int((ref.argmax(-1) == out.argmax(-1)).sum())
        total += len(ref)
        log_ref, log_out = log_softmax(ref), log_softmax(out)
        divergences.append((np.exp(log_ref) * (log_ref - log_out)).sum(-1))
    return agree / total, float(np.concatenate(divergences).mean())


def fidelity(
    base_spec: str,
    tools: str,
    train: Path,
    data: Path,
    mode: str,
    levels: list[str],
    rows: int,
    imatrix_rows: int,
) -> FidelityReport:
    import gguf
    import torch

    base = Base.resolve(base_spec)
    catalogue = load_catalogue(tools)
    with tempfile.TemporaryDirectory(prefix="toolroute-fidelity-") as folder:
        work = Path(folder)
        model, tokenizer = base.load_model(torch.float32), base.load_tokenizer()
        model.save_pretrained(work / "hf")
        tokenizer.save_pretrained(work / "hf")
        f16 = convert(work / "hf", work / "f16.gguf", "f16")
        prompt = router_prompt(catalogue, ChatTemplate.from_gguf(f16), mode)
        reader = gguf.GGUFReader(str(f16), "r")
        architecture = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
        names = gguf_weight_names(model, architecture, {t.name for t in reader.tensors})
        started = time.perf_counter()
        texts = [p + c for p, c in _rows(train, catalogue, prompt, imatrix_rows)]
        ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
        matrix: ImportanceMatrix = compute_imatrix(
            model, ids, names, dataset=f"{train.name} ({len(ids)} rows)"
        )
        imatrix_seconds = time.perf_counter() - started
        del model
        evaluated = _rows(data, catalogue, prompt, rows)
        reference = _completion_logits(f16, evaluated)
        results = []
        for level in levels:
            for variant, options in VARIANTS.items():
                path = work / "quantized.gguf"
                quantize(
                    f16, path, level, token_embedding=options.token_embedding,
                    imatrix=matrix if options.imatrix_rows else None,
                    replace_fallbacks=options.replace_fallbacks,
                )  # fmt: skip
                agreement, kl = compare(reference, _completion_logits(path, evaluated))
                results.append(
                    Fidelity(
                        level=level,
                        variant=variant,
                        size_mb=round(path.stat().st_size / 1e6, 1),
                        token_embedding=tensor_types(path, level).token_embedding,
                        top1_agreement=round(agreement, 4),
                        kl=round(kl, 4),
                    )
                )
                path.unlink()
    return FidelityReport(
        base=base_spec, mode=mode, rows=len(evaluated), completion_tokens=sum(len(r) for r in reference),
        imatrix_rows=len(ids), imatrix_seconds=round(imatrix_seconds, 1), results=results,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m toolroute.bench.quant_fidelity", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--base", default="default")
    parser.add_argument("--tools", required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--mode", default="none", help="prompt mode of the rows (none)")
    parser.add_argument("--quant", default="q8_0,q5_k_m,q4_k_m,q4_0")
    parser.add_argument("--rows", type=int, default=24, help="eval rows scored (24)")
    parser.add_argument("--imatrix-rows", type=int, default=QuantizeOptions().imatrix_rows)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    report = fidelity(
        args.base,
        args.tools,
        args.train,
        args.data,
        args.mode,
        parse_levels(args.quant),
        args.rows,
        args.imatrix_rows,
    )
    atomic_write_text(args.json, report.model_dump_json(indent=2) + "\n")
    print(f"{report.rows} rows, {report.completion_tokens} completion tokens")
    print(f"importance matrix from {report.imatrix_rows} rows in {report.imatrix_seconds} s")
    print("| level | variant | size MB | token embedding | top-1 agreement | KL |")
    print("|---|---|---:|---|---:|---:|")
    for r in report.results:
        cells = [r.level, r.variant, r.size_mb, r.token_embedding, f"{r.top1_agreement:.3f}", f"{r.kl:.4f}"]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
