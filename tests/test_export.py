"""Export with the tiny trained model: merge, llama.cpp conversion, quantization, embedded metadata."""

from __future__ import annotations

import hashlib
import json

import pytest

pytest.importorskip("torch")

from llama_cpp import Llama

from toolroute.cli import main
from toolroute.export.pipeline import export_run, format_report
from toolroute.runtime.router_file import RouterFileError, RouterMetadata, read_router_file
from toolroute.train.run_dir import IncompleteRun, RunDir


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    report = export_run(tiny_run, ["f16", "q8_0", "q4_k_m"], out, parity_prompts=4)
    return out, report


def test_export_writes_complete_router_files(exported, tiny_run):
    out, report = exported
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "tiny-router.export.json",
        "tiny-router.f16.gguf",
        "tiny-router.f16.gguf.sha256",
        "tiny-router.q4_k_m.gguf",
        "tiny-router.q4_k_m.gguf.sha256",
        "tiny-router.q8_0.gguf",
        "tiny-router.q8_0.gguf.sha256",
    ]  # fmt: skip  (no work directory, no partial files left)
    for file in report.files:
        path = out / f"tiny-router.{file.level}.gguf"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert (
            (out / f"{path.name}.sha256").read_text()
            == f"{digest}  {path.name}\n"
            == f"{file.sha256}  {path.name}\n"
        )
    sizes = {f.level: f.size_bytes for f in report.files}
    assert sizes["f16"] > sizes["q8_0"] > sizes["q4_k_m"]
    assert json.loads((out / "tiny-router.export.json").read_text())["run"] == "tiny-router"


def test_metadata_is_embedded_and_intact(exported, tiny_run):
    out, _ = exported
    manifest = RunDir(tiny_run).load_manifest()
    for level in ("f16", "q8_0", "q4_k_m"):
        router_file = read_router_file(out / f"tiny-router.{level}.gguf")
        metadata, kv = router_file.metadata, router_file.kv
        assert metadata.load_catalogue().names == ["track_order", "request_refund", "escalate"]
        assert metadata.system_prompt == manifest.system_prompt and metadata.prompt_mode == "compact"
        assert metadata.chat_template == manifest.chat_template == kv["tokenizer.chat_template"]
        assert metadata.grammar.startswith("# toolroute grammar: 3 tools + no_tool")
        run_manifest = (tiny_run / "manifest.json").read_bytes()
        assert metadata.manifest_sha256 == hashlib.sha256(run_manifest).hexdigest()
        assert json.loads(metadata.base)["sha256"] == manifest.base.sha256


def test_quantization_fallbacks_are_reported(exported):
    _, report = exported
    q4 = next(f for f in report.files if f.level == "q4_k_m")
    # 64-wide rows cannot be cut into 256-wide k-quant blocks: llama.cpp falls back, and we say so.
    assert q4.tensor_types.other, q4.tensor_types
    assert q4.tensor_types.counts.get("Q4_K", 0) == 0


def test_tokenizer_and_parity_checks_ran(exported):
    _, report = exported
    assert report.tokenizer_matches_base
    assert report.parity_prompts == 4
    assert report.parity_hf_vs_f16 is not None
    assert next(f for f in report.files if f.level == "f16").parity_with_f16 == 1.0


def test_each_quantized_level_keeps_the_file_closer_to_f16(exported):
    _, report = exported
    q4 = next(f for f in report.files if f.level == "q4_k_m")
    pick = q4.imatrix_pick
    assert pick is not None and pick.prompts == 4
    assert pick.kept_imatrix == (pick.nll_with <= pick.nll_without)
    # The file published is the one kept: it has the matrix exactly when the pick kept it.
    assert (q4.tensor_types.imatrix_rows is not None) == pick.kept_imatrix
    verdict = "kept" if pick.kept_imatrix else "left out"
    assert f"q4_k_m: importance matrix {verdict}" in format_report(report)
    # Q8_0 rounds the same with or without the matrix: nothing to pick.
    assert next(f for f in report.files if f.level == "q8_0").imatrix_pick is None


def test_the_pick_keeps_the_lower_nll_and_only_that_file(exported, tmp_path, monkeypatch):
    from toolroute.export import pipeline
    from toolroute.export.imatrix import ImportanceMatrix
    from toolroute.export.parity import Greedy
    from toolroute.export.quantize_options import QuantizeOptions

    out, _ = exported
    f16 = out / "tiny-router.f16.gguf"
    matrix = ImportanceMatrix()  # no values: the same rounding, but still "with a matrix" for the pick
    reference = [Greedy(prompt_ids=[1, 2], output_ids=[3], text="x")]
    monkeypatch.setattr(pipeline, "same_weights", lambda *a: False)
    for nll_with, nll_without, kept in ((0.5, 0.7, True), (0.9, 0.2, False), (0.3, 0.3, True)):
        scores = {"q4_0.gguf": nll_with, "q4_0.plain.gguf": nll_without}
        monkeypatch.setattr(pipeline, "gguf_reference_nll", lambda p, refs, scores=scores: scores[p.name])
        work = tmp_path / f"work-{nll_with}"
        work.mkdir()
        path, pick = pipeline._quantize_level(f16, work, "q4_0", QuantizeOptions(), matrix, reference)
        assert (
            pick is not None
            and pick.kept_imatrix is kept
            and (pick.nll_with, pick.nll_without)
            == (
                nll_with,
                nll_without,
            )
        )
        assert path.name == ("q4_0.gguf" if kept else "q4_0.plain.gguf")
        assert sorted(p.name for p in work.iterdir()) == [path.name]  # the other file is gone
    # Options that always keep the matrix, or no prompts to measure on: no pick, no second file.
    for options, refs in ((QuantizeOptions(pick_imatrix=False), reference), (QuantizeOptions(), [])):
        work = tmp_path / f"work-none-{len(refs)}"
        work.mkdir()
        assert pipeline._quantize_level(f16, work, "q4_0", options, matrix, refs)[1] is None
        assert [p.name for p in work.iterdir()] == ["q4_0.gguf"]


def test_reference_nll_is_lowest_for_the_files_own_greedy_outputs(exported):
    from toolroute.export.parity import Greedy, gguf_greedy, gguf_reference_nll

    out, _ = exported
    f16 = out / "tiny-router.f16.gguf"
    prompts = ["<|im_start|>user\nwhere is ORD-1?<|im_end|>\n<|im_start|>assistant\n"]
    own = gguf_greedy(f16, prompts, 6)
    other = [
        Greedy(prompt_ids=g.prompt_ids, output_ids=[(t + 1) % 1000 + 5 for t in g.output_ids], text="")
        for g in own
    ]
    own_nll, other_nll = gguf_reference_nll(f16, own), gguf_reference_nll(f16, other)
    assert 0 <= own_nll < other_nll  # greedy tokens are the argmax at every step


def test_stock_llama_cpp_python_loads_and_runs_the_file(exported):
    out, _ = exported
    llama = Llama(str(out / "tiny-router.q8_0.gguf"), n_ctx=256, verbose=False)
    try:
        completion = llama.create_completion("<|im_start|>user\nhi<|im_end|>\n", max_tokens=4, temperature=0)
        assert completion["usage"]["completion_tokens"] >= 1
    finally:
        llama.close()


def test_incomplete_runs_are_refused(tmp_path):
    run = RunDir(tmp_path / "half")
    run.start()
    with pytest.raises(IncompleteRun, match="incomplete"):
        export_run(run.path, ["f16"], tmp_path / "dist")
    assert not (tmp_path / "dist").exists()


def test_inspect_cli_and_non_router_files(exported, capsys, tmp_path):
    out, _ = exported
    assert main(["inspect", str(out / "tiny-router.q8_0.gguf")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tools"] == ["track_order", "request_refund", "escalate"]
    with pytest.raises(RouterFileError, match=r"no toolroute\.\* metadata"):
        RouterMetadata.from_kv({"general.architecture": "llama"}, where="plain.gguf")
    kv = read_router_file(out / "tiny-router.q8_0.gguf").kv
    kv["toolroute.catalogue"] = kv["toolroute.catalogue"].replace("track_order", "track_ordr")
    with pytest.raises(RouterFileError, match="does not match its hash"):
        RouterMetadata.from_kv(kv)
