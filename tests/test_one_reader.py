"""One reader per fact, on the measuring side: router metadata and data rows are read the way the
runtime and training read them, not again by hand.

- Router metadata comes from the file's header (`read_router_file`, `read_gguf_metadata`) and is
  checked before llama.cpp opens the file: `Llama(...)` compiles the file's chat templates while
  loading, and a crafted one runs unbounded there.
- Data rows come from `read_valid_examples`: a row that does not read stops the tool naming its
  file and line, instead of being dropped without a word.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import runtime_support

from support import CUSTOMER_SUPPORT_TOOLS, ROOT
from toolroute.bench import latency, load, quant_bench
from toolroute.bench.router_files import has_router_metadata
from toolroute.grammars import load_catalogue
from toolroute.runtime.base_models import packaged_gguf
from toolroute.runtime.router_file import read_router_file
from toolroute.train.formats import InvalidDataError
from toolroute.train.run_dir import RunDir, RunManifest

EVAL = ROOT / "examples" / "customer_support" / "eval.jsonl"


def _forbid_llama(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on, opening a file with llama-cpp-python's model class fails the test (the files
    a test needs are built first: building them opens the default base)."""
    import llama_cpp

    def opened(path: str, *args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"llama.cpp opened {path} before its metadata was checked")

    monkeypatch.setattr(llama_cpp, "Llama", opened)


def _rows(path: Path, count: int, bad_line: int | None = None) -> Path:
    """`count` customer-support eval rows, the one at `bad_line` (1-based) replaced by a row with
    no user turn."""
    lines = EVAL.read_text(encoding="utf-8").splitlines()[:count]
    if bad_line is not None:
        lines[bad_line - 1] = json.dumps({"messages": [{"role": "assistant", "content": "hi"}]})
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _run(folder: Path, base: Path, train: Path) -> RunDir:
    """A finished run's directory as export and the benchmarks read it (the manifest only)."""
    catalogue = load_catalogue(CUSTOMER_SUPPORT_TOOLS)
    metadata = runtime_support.router_metadata(catalogue)
    digest = hashlib.sha256(train.read_bytes()).hexdigest()
    manifest = RunManifest(
        name="readers",
        base={
            "spec": str(base), "kind": "gguf", "path": str(base), "sha256": "0" * 64,
            "architecture": "llama", "parameters": 0, "chat_template_sha256": "0" * 64,
        },
        catalogue=catalogue.to_openai(),
        catalogue_sha256=catalogue.sha256,
        prompt_mode=metadata.prompt_mode,
        system_prompt=metadata.system_prompt,
        chat_template=metadata.chat_template,
        completion_suffix=metadata.completion_suffix,
        data={"train": {"path": str(train), "sha256": digest, "examples": 1, "used": 1,
                        "dropped_too_long": 0}},
        config={}, metrics={}, wall_time_s=0.0, device="cpu", versions={},
    )  # fmt: skip
    run = RunDir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    run.manifest_path.write_text(manifest.model_dump_json(), encoding="utf-8")
    return run


# -- router metadata ----------------------------------------------------------------------------


def test_router_metadata_is_told_from_the_header(tmp_path_factory, tmp_path, monkeypatch):
    router = runtime_support.tiny_router_file(tmp_path_factory)
    _forbid_llama(monkeypatch)
    assert has_router_metadata(router)
    assert not has_router_metadata(packaged_gguf())  # a plain base: the latency bench embeds a catalogue
    assert quant_bench._embedded_manifest_sha(router) == "0" * 64
    assert quant_bench._embedded_manifest_sha(packaged_gguf()) is None
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(router.read_bytes()[:4096])  # cut inside the header
    assert quant_bench._embedded_manifest_sha(damaged) is None  # exported again, never reused


def test_the_untuned_row_takes_the_routers_checked_metadata_without_llama_cpp(
    tmp_path_factory, tmp_path, monkeypatch
):
    router = runtime_support.tiny_router_file(tmp_path_factory, "tiny-half.gguf", min_confidence="0.5")
    base = runtime_support.tiny_base_file(tmp_path_factory)
    run = _run(tmp_path / "run", base, _rows(tmp_path / "train.jsonl", 2))
    _forbid_llama(monkeypatch)
    work = tmp_path / "work"
    work.mkdir()
    untuned = read_router_file(quant_bench.untuned_base_of_run(run, router, work))
    trained = read_router_file(router)
    assert trained.metadata.threshold == 0.5 and untuned.metadata.threshold is None
    assert untuned.metadata.model_dump(exclude={"min_confidence", "metadata_sha256"}) == (
        trained.metadata.model_dump(exclude={"min_confidence", "metadata_sha256"})
    )


# -- data rows ----------------------------------------------------------------------------------


def test_export_refuses_a_split_row_that_no_longer_reads(tmp_path, tmp_path_factory):
    from toolroute.export.pipeline import _imatrix_rows, _parity_prompts
    from toolroute.runtime.chat_template import ChatTemplate

    template = ChatTemplate.from_gguf(packaged_gguf())
    base = runtime_support.tiny_base_file(tmp_path_factory)
    good = _run(tmp_path / "good", base, _rows(tmp_path / "good.jsonl", 3)).load_manifest()
    assert len(_parity_prompts(good, template, 5)) == len(_imatrix_rows(good, template, 5)) == 3
    bad = _run(tmp_path / "bad", base, _rows(tmp_path / "bad.jsonl", 3, bad_line=2)).load_manifest()
    for rows in (_parity_prompts, _imatrix_rows):
        with pytest.raises(InvalidDataError, match=r"bad\.jsonl:2: "):
            rows(bad, template, 5)


def test_the_step_speed_bench_refuses_invalid_rows_naming_the_line(tmp_path):
    from toolroute.bench.train_step_speed import _rows as step_rows
    from toolroute.train.config import TrainConfig

    data = _rows(tmp_path / "steps.jsonl", 3, bad_line=3)
    config = TrainConfig(name="steps", data=data, tools=str(CUSTOMER_SUPPORT_TOOLS))
    with pytest.raises(SystemExit, match=r"steps\.jsonl:3: "):
        step_rows(config, "compact", tokenizer=None, template=None)


def test_the_latency_and_load_benches_read_the_routed_requests(tmp_path):
    texts = load.eval_requests()
    # The routed user turn of every row, as the benches took it before reading through training's reader.
    rows = [json.loads(line) for line in EVAL.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert texts == [row["messages"][1]["content"] for row in rows]
    assert latency.requests(4) == texts[:4]
    with pytest.raises(InvalidDataError, match=r"requests\.jsonl:2: "):
        load.eval_requests(_rows(tmp_path / "requests.jsonl", 3, bad_line=2))
