"""The copy rule in the HF-side evaluation before export: the same rule as the runtime's."""

from __future__ import annotations

import numpy as np
import pytest
import runtime_support

from toolroute.bench.hf_copy import CopyRuleForHf, token_pieces
from toolroute.bench.hf_eval import HfRouter, evaluate_run
from toolroute.grammars import is_span
from toolroute.runtime.copying import FieldLimits, PieceTrie
from toolroute.runtime.router import Router
from toolroute.train.examples import Example, Target
from toolroute.train.run_dir import RunDir

REQUESTS = [
    'where is my order "A-17\\b" 😀 please',
    "refund order #9921, it came broken",
    "my parcel 88-X is late, track it",
    "escalate: package ORD-5 never came, I want a human",
]


def test_the_hf_tokenizers_pieces_are_llama_cpps(tiny_run, tmp_path_factory):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(RunDir(tiny_run).tokenizer))
    pieces = token_pieces(tokenizer)
    with Router.load(runtime_support.tiny_router_file(tmp_path_factory), n_threads=1) as router:
        reference = router.vocabulary.pieces
    assert len(pieces) >= len(reference)
    differing = [t for t in range(len(reference)) if pieces[t] != reference[t] and pieces[t]]
    assert not differing, differing[:10]


def test_the_processor_masks_what_the_rule_refuses():
    """Without a model: scores over a small vocabulary, one step at a time."""
    import torch

    pieces = [b'{"tool":"track_order","arguments":{"order_id":"', b"AB", b"X", b'"}}', b"-1", b'"', b"B"]
    limits = {"track_order": {"order_id": FieldLimits(1, 16)}}
    rule = CopyRuleForHf.__new__(CopyRuleForHf)
    rule.pieces, rule.trie, rule.limits = pieces, PieceTrie(pieces), limits
    rule.quoted = np.array([i for i, p in enumerate(pieces) if b'"' in p])
    processor = rule.processor("ship AB-1 now", prompt_length=2)
    ids = torch.tensor([[7, 7, 0]])  # two prompt tokens, then the opening of the call
    masked = processor(ids, torch.zeros(1, len(pieces)))
    allowed = set(torch.isfinite(masked[0]).nonzero().flatten().tolist())
    assert allowed == {1, 4, 6}  # "AB", "-1", "B" start spans; "X" and an empty value's close do not
    masked = processor(torch.tensor([[7, 7, 0, 1]]), torch.zeros(1, len(pieces)))
    assert set(torch.isfinite(masked[0]).nonzero().flatten().tolist()) == {3, 4, 5}  # close, or go on
    assert processor.dead_end is None


@pytest.mark.slow
def test_the_hf_side_holds_copied_values_to_request_spans(tiny_run):
    manifest = RunDir(tiny_run).load_manifest()
    copied = {(d.tool, d.argument) for d in manifest.copied_arguments if d.copied}
    assert ("track_order", "order_id") in copied  # the customer-support rows copy their order ids
    examples = [
        Example(request=text, target=Target(tool="track_order", arguments={"order_id": "x"}), source="t:1")
        for text in REQUESTS
    ]
    router = HfRouter(tiny_run)
    assert router.copy_limits and HfRouter.__init__.__defaults__ == (True,)
    _, predictions = evaluate_run(router, examples, max_new_tokens=40)
    for text, prediction in zip(REQUESTS, predictions, strict=True):
        if prediction.kind == "call" and (prediction.tool, "order_id") in copied:
            value = (prediction.arguments or {}).get("order_id")
            assert value is None or is_span(value, text), (value, text)
            assert prediction.min_token_logprob is not None and prediction.min_token_logprob <= 0
