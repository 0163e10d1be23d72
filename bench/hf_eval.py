"""Evaluate a training run before export: the merged model in transformers.

Constrained (the default): outlines turns the output JSON Schema (`output_json_schema`, the union
of every tool's call and no_tool) into a token-level mask, with no whitespace allowed between
tokens, so the only texts possible are compact calls, as with the GBNF at run time. Greedy.
`unconstrained=True`: plain greedy `generate`, parsed afterwards; the valid-tool-call rate is
then a property of the model. Either way the prompt is the one training rendered
(`RouterPrompt`, the manifest's system prompt and chat template), tokenized as TRL tokenized it.

The HF path reports no confidence (the runtime's is read from llama.cpp's logits at the decision
point), so its risk-coverage sweep has the one point "every call dispatched".
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from toolroute.grammars import Catalogue, catalogue_gbnf, output_json_schema
from toolroute.grammars.gbnf import GrammarOptions
from toolroute.grammars.output_bound import completion_token_budget
from toolroute.runtime.chat_template import ChatTemplate, RouterPrompt
from toolroute.train.examples import Example
from toolroute.train.run_dir import RunDir, RunManifest

from .evaluate import gold_of, prediction_of_text
from .metrics import EvalReport, Prediction, evaluate_predictions


class HfRouter:
    """A run's base + adapter, merged in memory (fp32), with the run's prompt and catalogue."""

    def __init__(self, run_path: str | Path) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoTokenizer

        from toolroute.train.bases import Base

        self.run = RunDir(Path(run_path))
        self.manifest: RunManifest = self.run.load_manifest()
        self.catalogue = run_catalogue(run_path)
        base = Base.resolve(self.manifest.base.spec)
        model = base.load_model(torch.float32)
        self.model = PeftModel.from_pretrained(model, str(self.run.adapter)).merge_and_unload().eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.run.tokenizer))
        template = ChatTemplate(
            template=self.manifest.chat_template,
            bos_token=self.tokenizer.bos_token or "",
            eos_token=self.tokenizer.eos_token or "",
        )
        self.prompt = RouterPrompt(chat_template=template, system_prompt=self.manifest.system_prompt)
        self._outlines: Any = None
        self._output_type: Any = None

    def _constrained(self) -> tuple[Any, Any]:
        if self._outlines is None:
            import outlines
            from outlines.types import JsonSchema

            self._outlines = outlines.from_transformers(self.model, self.tokenizer)
            schema = output_json_schema(self.catalogue, GrammarOptions())
            self._output_type = JsonSchema(json.dumps(schema), whitespace_pattern="", ensure_ascii=False)
        return self._outlines, self._output_type

    def generate(self, example: Example, *, constrained: bool, max_new_tokens: int) -> tuple[str, int]:
        """(output text, prompt tokens) for one example, greedy."""
        import torch

        text = self.prompt.render(example.request, example.history)
        prompt_tokens = len(self.tokenizer(text)["input_ids"])
        if constrained:
            model, output_type = self._constrained()
            raw = model(text, output_type, max_new_tokens=max_new_tokens, do_sample=False)
            return str(raw), prompt_tokens
        encoded = self.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            output = self.model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        generated = output[0, encoded["input_ids"].shape[1] :]
        raw = self.tokenizer.decode(generated, skip_special_tokens=False)
        suffix = self.manifest.completion_suffix
        return (raw.split(suffix)[0] if suffix else raw), prompt_tokens


def run_catalogue(run_path: str | Path) -> Catalogue:
    """A finished run's catalogue, from its manifest (checked against the recorded hash)."""
    run = RunDir(Path(run_path))
    manifest = run.load_manifest()
    return manifest.load_catalogue(str(run.manifest_path))


def evaluate_run(
    router: HfRouter,
    examples: Sequence[Example],
    *,
    unconstrained: bool = False,
    max_new_tokens: int | None = None,
) -> tuple[EvalReport, list[Prediction]]:
    """Greedy outputs for `examples`, scored. The default token budget is the grammar's own bound
    on the output's length in bytes (as at run time), so no valid output is ever cut short."""
    if max_new_tokens is None:
        max_new_tokens = completion_token_budget(catalogue_gbnf(router.catalogue, GrammarOptions()))
    predictions = []
    label = "free" if unconstrained else "outlines"
    for example in tqdm(examples, desc=f"eval {router.run.path} ({label})", leave=False):
        start = time.perf_counter()
        raw, prompt_tokens = router.generate(
            example, constrained=not unconstrained, max_new_tokens=max_new_tokens
        )
        latency = (time.perf_counter() - start) * 1000.0
        predictions.append(prediction_of_text(raw, router.catalogue, latency, prompt_tokens))
    golds = [gold_of(e) for e in examples]
    return evaluate_predictions(golds, predictions, router.catalogue), predictions
