"""Evaluate a training run before export: the merged model in transformers.

Constrained (the default): outlines turns the output JSON Schema (`output_json_schema`, the union
of every tool's call and no_tool) into a token-level mask, with no whitespace allowed between
tokens, so the only texts possible are compact calls, as with the GBNF at run time; the run's
copied arguments are held to spans of the request by the runtime's own rule (`hf_copy.py`,
`copy_rule=False` turns it off). Greedy.
`unconstrained=True`: plain greedy `generate`, parsed afterwards; the valid-tool-call rate is
then a property of the model. Either way the prompt is the one training rendered
(`RouterPrompt`, the manifest's system prompt and chat template), tokenized as TRL tokenized it.

The HF path reports the call-level scores (from the constrained distribution of each step) but no
name probability (the runtime's is read from llama.cpp's logits at the decision point).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from toolroute.grammars import NO_TOOL, Catalogue, catalogue_gbnf, output_json_schema
from toolroute.grammars.gbnf import GrammarOptions
from toolroute.grammars.output_bound import completion_token_budget
from toolroute.runtime.chat_template import ChatTemplate, RouterPrompt
from toolroute.runtime.copying import copied_limits
from toolroute.train.copied import copied_arguments
from toolroute.train.examples import Example
from toolroute.train.run_dir import RunDir, RunManifest

from .evaluate import gold_of, prediction_of_text
from .hf_copy import CopyRuleForHf, call_scores
from .metrics import EvalReport, Prediction, evaluate_predictions

NO_TOOL_PREFIX = f'{{"tool":"{NO_TOOL}"'


class HfRouter:
    """A run's trained model in memory (fp32; LoRA merged), with the run's prompt and catalogue."""

    def __init__(self, run_path: str | Path, copy_rule: bool = True) -> None:
        import torch
        from transformers import AutoTokenizer

        from toolroute.train.weights import load_trained_model

        self.run = RunDir(Path(run_path))
        self.manifest: RunManifest = self.run.load_manifest()
        self.catalogue = run_catalogue(run_path)
        self.model = load_trained_model(self.run, self.manifest, torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.run.tokenizer))
        template = ChatTemplate(
            template=self.manifest.chat_template,
            bos_token=self.tokenizer.bos_token or "",
            eos_token=self.tokenizer.eos_token or "",
        )
        self.prompt = RouterPrompt(chat_template=template, system_prompt=self.manifest.system_prompt)
        copied = copied_arguments(self.manifest.copied_arguments) if copy_rule else ()
        # The exported file's grammar options are the defaults (export's), and so the length caps.
        self.copy_limits = copied_limits(self.catalogue.tools, copied, GrammarOptions().max_string_length)
        self._processor: Any = None
        self._copy: CopyRuleForHf | None = None

    def _constrained(self) -> Any:
        """Outlines' JSON Schema mask (built once, reset per output)."""
        if self._processor is None:
            import outlines
            from outlines.backends import get_json_schema_logits_processor

            model = outlines.from_transformers(self.model, self.tokenizer)
            schema = json.dumps(output_json_schema(self.catalogue, GrammarOptions()), ensure_ascii=False)
            self._processor = get_json_schema_logits_processor(None, model, schema, whitespace_pattern="")
            if self.copy_limits:
                self._copy = CopyRuleForHf(self.tokenizer, self.copy_limits)
        return self._processor

    def generate(self, example: Example, *, constrained: bool, max_new_tokens: int) -> HfOutput:
        """One example's greedy output (with its call scores when constrained)."""
        import torch

        text = self.prompt.render(example.request, example.history)
        prompt_tokens = len(self.tokenizer(text)["input_ids"])
        if constrained:
            return self._generate_constrained(example, text, prompt_tokens, max_new_tokens)
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
        return HfOutput(text=raw.split(suffix)[0] if suffix else raw, prompt_tokens=prompt_tokens)

    def _generate_constrained(
        self, example: Example, text: str, prompt_tokens: int, max_new_tokens: int
    ) -> HfOutput:
        import torch
        from transformers import LogitsProcessorList

        processor = self._constrained()
        processor.reset()
        encoded = self.tokenizer(text, return_tensors="pt")
        length = encoded["input_ids"].shape[1]
        processors = [processor]
        copy = self._copy.processor(example.request.strip(), length) if self._copy is not None else None
        if copy is not None:
            processors.append(copy)
        with torch.no_grad():
            output = self.model.generate(
                **encoded,
                logits_processor=LogitsProcessorList(processors),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        generated = output.sequences[0, length:].tolist()
        raw = self.tokenizer.decode(generated, skip_special_tokens=True)
        total, least = (
            (None, None) if raw.startswith(NO_TOOL_PREFIX) else call_scores(output.scores, generated)
        )
        return HfOutput(
            text=raw,
            prompt_tokens=prompt_tokens,
            call_logprob=total,
            min_token_logprob=least,
            dead_end=None if copy is None or copy.dead_end is None else ".".join(copy.dead_end),
        )


@dataclass
class HfOutput:
    text: str
    prompt_tokens: int
    call_logprob: float | None = None
    min_token_logprob: float | None = None
    dead_end: str | None = None  # a copied argument no span fitted: the rule stepped aside there


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
        output = router.generate(example, constrained=not unconstrained, max_new_tokens=max_new_tokens)
        latency = (time.perf_counter() - start) * 1000.0
        prediction = prediction_of_text(output.text, router.catalogue, latency, output.prompt_tokens)
        if prediction.kind == "call":
            scores = {"call_logprob": output.call_logprob, "min_token_logprob": output.min_token_logprob}
            prediction = prediction.model_copy(update=scores)
        predictions.append(prediction)
    golds = [gold_of(e) for e in examples]
    return evaluate_predictions(golds, predictions, router.catalogue), predictions
