"""Quantization that keeps the router: the token embedding's type, the importance matrix, the
recommended level. The tiny trained model goes through the real export (llama.cpp quantizes)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from support import ROOT

pytest.importorskip("torch")

from toolroute.bench.measure import Measurement
from toolroute.bench.metrics import Gold, Prediction, evaluate_predictions
from toolroute.bench.quant_bench import BenchRow, recommended_level
from toolroute.export.imatrix import KEY_CHUNKS, compute_imatrix
from toolroute.export.pipeline import export_run
from toolroute.export.quantize import made_with, quantize, tensor_types
from toolroute.export.quantize_options import QuantizeOptions
from toolroute.grammars import load_catalogue


class Quantized:
    """One quantized file, read once (reading a GGUF's 49k-token vocabulary is the slow part)."""

    def __init__(self, path):
        self.path = path
        self.reader = gguf.GGUFReader(str(path), "r")
        self.types = tensor_types(path, "q4_0")

    def tensor(self, name):
        return next(t for t in self.reader.tensors if t.name == name)


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    """The tiny run exported with an F16 token embedding and an importance matrix, and the same
    F16 file quantized directly with the defaults but no imatrix, and with llama.cpp's plain settings."""
    out = tmp_path_factory.mktemp("dist")
    options = QuantizeOptions(token_embedding="f16", imatrix_rows=64)
    report = export_run(tiny_run, ["f16", "q4_0"], out, parity_prompts=0, quantization=options)
    f16 = out / "tiny-router.f16.gguf"
    plain = quantize(f16, out / "plain.q4_0.gguf", "q4_0", token_embedding="level")
    q8_embedding = quantize(f16, out / "q8.q4_0.gguf", "q4_0", token_embedding="q8_0")
    return report, Quantized(out / "tiny-router.q4_0.gguf"), Quantized(plain), Quantized(q8_embedding)


def test_token_embedding_type_is_the_one_asked_for(exported):
    # llama.cpp on its own puts this model's tied embedding at Q8_0 (a 64-wide row has no room
    # for a k-quant block); asking for F16 must give F16, read back from the file.
    report, weighted, _, q8_embedding = exported
    assert weighted.tensor("token_embd.weight").tensor_type == gguf.GGMLQuantizationType.F16
    q4 = next(f for f in report.files if f.level == "q4_0")
    assert q4.tensor_types.token_embedding == "F16" and q4.tensor_types.output is None
    assert report.quantization.token_embedding == "f16"
    assert q8_embedding.tensor("token_embd.weight").tensor_type == gguf.GGMLQuantizationType.Q8_0


def test_importance_matrix_quantization_runs_and_is_recorded(exported):
    report, weighted, plain, _ = exported
    # 48 training rows in the tiny run, fewer than the 64 asked for: all of them.
    assert report.imatrix is not None and report.imatrix.rows == 48 and report.imatrix.tokens > 48 * 20
    # 2 layers x 7 linear weights (q, k, v, o, gate, up, down); the tied head has no weight of its own.
    assert report.imatrix.tensors == 14
    assert weighted.reader.get_field(KEY_CHUNKS).contents() == 48 == weighted.types.imatrix_rows
    assert plain.types.imatrix_rows is None
    # The importance matrix changes how the weights are rounded.
    with_matrix, without = weighted.tensor("blk.0.ffn_down.weight"), plain.tensor("blk.0.ffn_down.weight")
    assert with_matrix.tensor_type == without.tensor_type == gguf.GGMLQuantizationType.Q4_0
    assert not np.array_equal(np.asarray(with_matrix.data), np.asarray(without.data))


def test_files_say_how_they_were_quantized(exported):
    _, weighted, plain, q8_embedding = exported
    f16_embedding = QuantizeOptions(token_embedding="f16")
    assert made_with(weighted.types, f16_embedding) and not made_with(plain.types, f16_embedding)
    assert made_with(plain.types, QuantizeOptions.plain())
    assert not made_with(weighted.types, QuantizeOptions.plain())  # it has an importance matrix
    assert not made_with(weighted.types, QuantizeOptions())  # F16 embedding, not Q8_0
    # Q8_0 embedding but no importance matrix: what the defaults make when the pick leaves the
    # matrix out, and not what options that always keep it make.
    assert made_with(q8_embedding.types, QuantizeOptions())
    assert not made_with(q8_embedding.types, QuantizeOptions(pick_imatrix=False))
    assert made_with(q8_embedding.types, QuantizeOptions(imatrix_rows=0))


def test_q5_k_fallback_is_q5_0_not_q5_1(exported, tmp_path):
    # The tiny model's 64-wide rows cannot take Q5_K; llama.cpp makes them Q5_1, the export Q5_0,
    # and the file says how many it replaced, so a bench can tell the two files apart.
    report, *_ = exported
    f16 = next(f for f in report.files if f.level == "f16").path
    llama = tensor_types(quantize(f16, tmp_path / "llama.gguf", "q5_k_m"), "q5_k_m")
    replaced = tensor_types(quantize(f16, tmp_path / "ours.gguf", "q5_k_m", replace_fallbacks=True), "q5_k_m")
    assert llama.counts.get("Q5_1", 0) > 0 and llama.replaced_fallbacks == 0
    assert "Q5_1" not in replaced.counts
    assert replaced.replaced_fallbacks == llama.counts["Q5_1"]
    assert replaced.counts["Q5_0"] == llama.counts["Q5_1"] + llama.counts.get("Q5_0", 0)
    # Only Q5_1 is touched: every other weight keeps llama.cpp's type.
    for name, kind in llama.other.items():
        if kind != "Q5_1":
            assert replaced.other.get(name, replaced.main_type) == kind
    plain, ours = QuantizeOptions.plain(), QuantizeOptions(imatrix_rows=0, token_embedding="level")
    assert made_with(llama, plain) and not made_with(llama, ours)
    assert made_with(replaced, ours) and not made_with(replaced, plain)
    # At q5_0 llama.cpp's own Q5_1 choices (the first ffn_down weights, with an imatrix) are no fallbacks.
    q5_0 = quantize(f16, tmp_path / "q5_0.gguf", "q5_0", replace_fallbacks=True)
    assert tensor_types(q5_0, "q5_0").replaced_fallbacks == 0


def test_importance_matrix_is_the_mean_squared_input_per_column():
    import torch

    class Body(torch.nn.Module):
        """Token t's input to `first` is t * (1, 2, 0)."""

        def __init__(self) -> None:
            super().__init__()
            self.first = torch.nn.Linear(3, 3, bias=False)

        def forward(self, input_ids, attention_mask, use_cache=False):
            return (self.first(input_ids.float().unsqueeze(-1) * torch.tensor([1.0, 2.0, 0.0])),)

    class WithHead(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.lm_head = Body(), torch.nn.Linear(3, 5, bias=False)

        base_model = property(lambda self: self.model)

        def get_output_embeddings(self):
            return self.lm_head

    torch.manual_seed(0)
    model = WithHead()
    names = {"model.first": "blk.0.attn_q.weight", "lm_head": "output.weight"}
    # Batched, the short row is padded; the padding must not count.
    matrix = compute_imatrix(model, [[1, 2], [3]], names, dataset="d")
    # tokens 1, 2, 3 -> mean of squares (1 + 4 + 9) / 3 * (1, 4, 0)
    np.testing.assert_allclose(matrix.values["blk.0.attn_q.weight"], [14 / 3, 56 / 3, 0.0], rtol=1e-6)
    # The head's input is the body's output, without running the head.
    with torch.no_grad():
        hidden = model.model.first(torch.tensor([[1.0], [2.0], [3.0]]) * torch.tensor([1.0, 2.0, 0.0]))
    np.testing.assert_allclose(matrix.values["output.weight"], hidden.pow(2).mean(0).numpy(), rtol=1e-5)
    assert matrix.texts == 2 and matrix.tokens == 3
    one_by_one = compute_imatrix(model, [[1, 2], [3]], names, dataset="d", batch_size=1)
    for name, values in matrix.values.items():
        np.testing.assert_allclose(one_by_one.values[name], values, rtol=1e-5)


def _row(level: str, size_mb: float, tool_accuracy: float, wrong_arguments: int = 0) -> BenchRow:
    """200 requests: the first `wrong_arguments` are right-tool calls with a wrong order id (tool
    right, exact call wrong), the rest no_tool, answered right up to `tool_accuracy`."""
    catalogue = load_catalogue(ROOT / "examples" / "customer_support" / "tools.py")
    right = round(tool_accuracy * 200)
    call = {"order_id": "A1"}
    golds = [
        Gold(request=str(i), tool="track_order", arguments=call) if i < wrong_arguments
        else Gold(request=str(i), tool="no_tool")
        for i in range(200)
    ]  # fmt: skip
    predictions = [
        Prediction(kind="call", tool="track_order", arguments={"order_id": "B2"}) if i < wrong_arguments
        else Prediction(kind="no_tool") if i < right else Prediction(kind="invalid")
        for i in range(200)
    ]  # fmt: skip
    report = evaluate_predictions(golds, predictions, catalogue)
    measurement = Measurement(
        file=f"{level}.gguf", runner="router", size_bytes=int(size_mb * 1e6), load_s=0.1, peak_rss_mb=1.0,
        threads=1, requests=200, latency_ms_p50=1.0, latency_ms_p95=1.0, output_tokens_per_s=None,
        report=report,
    )  # fmt: skip
    return BenchRow(label=level.upper(), level=level, measurement=measurement)


def test_recommended_level_is_the_smallest_within_one_point_of_f16():
    rows = [
        _row("f16", 270, 0.90), _row("q8_0", 145, 0.895), _row("q5_k_m", 112, 0.89),
        _row("q4_k_m", 105, 0.885), _row("q4_0", 92, 0.60),
    ]  # fmt: skip
    assert recommended_level(rows) == "q5_k_m"  # q4_k_m is 1.5 points below F16
    rows[3] = _row("q4_k_m", 105, 0.91)  # better than F16 counts as within
    assert recommended_level(rows) == "q4_k_m"
    assert recommended_level(rows[1:]) is None  # no F16 row measured: nothing to compare against
    # A level that keeps the tools but writes wrong arguments (exact calls 4 points below) does not
    # keep the router: the customer-support Q2_K case.
    rows[3] = _row("q4_k_m", 105, 0.90, wrong_arguments=8)
    assert rows[3].measurement.report.tool_name_accuracy == 0.90
    assert rows[3].measurement.report.exact_call_accuracy == 0.86
    assert recommended_level(rows) == "q5_k_m"


def test_export_and_bench_flags_make_the_options():
    import argparse

    from toolroute.cli.export import add_quantize_flags, quantize_options

    parser = argparse.ArgumentParser()
    add_quantize_flags(parser)
    assert quantize_options(parser.parse_args([])) == QuantizeOptions(token_embedding="q8_0", imatrix_rows=64)
    assert quantize_options(parser.parse_args(["--plain-quant"])) == QuantizeOptions.plain()
    chosen = parser.parse_args(["--token-embedding", "f16", "--imatrix-rows", "0"])
    assert quantize_options(chosen) == QuantizeOptions(token_embedding="f16", imatrix_rows=0)
    kept = quantize_options(parser.parse_args(["--llama-fallbacks"]))
    assert kept == QuantizeOptions(replace_fallbacks=False)
    with pytest.raises(ValueError, match="--imatrix-rows must be 0 or more"):
        quantize_options(parser.parse_args(["--imatrix-rows", "-1"]))


def test_native_stderr_keeps_every_line_but_the_fallbacks(capfd):
    """Written to file descriptor 2 below Python (as llama.cpp's C code writes), in order; a
    failure inside the block still gets its lines out."""
    import os

    from toolroute.export.native_stderr import folded_stderr

    with pytest.raises(RuntimeError), folded_stderr() as folded:
        os.write(2, b"first\n")
        os.write(2, b"warning: blk.0.attn_k.weight - ncols 576 not divisible by 256 (required for type q4_K)")
        os.write(2, b" -> falling back to q5_0\n")
        os.write(2, b"llama_tensor_get_type: blk.0.ffn_up.weight - applying manual override: q3_K -> q4_0\n")
        os.write(2, b"last line, no newline")
        raise RuntimeError("quantize failed")
    assert capfd.readouterr().err == "first\nlast line, no newline"
    assert [line.split(" - ")[0].split()[-1] for line in folded.lines] == [
        "blk.0.attn_k.weight",
        "blk.0.ffn_up.weight",
    ]
