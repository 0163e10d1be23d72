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
from toolroute.runtime.chat import ChatTemplate, RouterPrompt
from toolroute.runtime.evaluate import gold_of, prediction_of_text
from toolroute.runtime.limits import gbnf_max_bytes
from toolroute.runtime.metrics import EvalReport, Prediction, evaluate_predictions

from .examples import Example
from .run_dir import RunDir, RunManifest


def capped(schema: Any, options: GrammarOptions) -> Any:
    """The schema with the GBNF's caps spelled out: `maxLength` on strings (patterns, enums and
    formats aside), `maxItems` on arrays, so that outlines admits the outputs the runtime's grammar
    admits and every generation ends within the same token budget."""
    if isinstance(schema, list):
        return [capped(item, options) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: capped(value, options) for key, value in schema.items()}
    if out.get("type") == "string" and not {"enum", "const", "pattern", "format"} & out.keys():
        out["maxLength"] = min(out.get("maxLength", options.max_string_length), options.max_string_length)
    if out.get("type") == "array":
        out["maxItems"] = min(out.get("maxItems", options.max_array_items), options.max_array_items)
    return out


class HfRouter:
    """A run's base + adapter, merged in memory (fp32), with the run's prompt and catalogue."""

    def __init__(self, run_path: str | Path) -> None:
        import torch
        from peft import PeftModel
        from transformers import AutoTokenizer

        from .bases import Base

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
            schema = capped(output_json_schema(self.catalogue, GrammarOptions()), GrammarOptions())
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
    catalogue = Catalogue.from_openai(manifest.catalogue, where=str(run.manifest_path))
    if catalogue.sha256 != manifest.catalogue_sha256:
        raise ValueError(f"{run.manifest_path}: the catalogue does not match its recorded hash")
    return catalogue


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
        bound = gbnf_max_bytes(catalogue_gbnf(router.catalogue, GrammarOptions()))
        max_new_tokens = (bound or 1024) + 1
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
