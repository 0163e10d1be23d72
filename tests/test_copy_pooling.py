"""`python -m toolroute.bench.copy_pooling`: one router file re-embedded with pooled copy inference
on and off (the marks are metadata, so this is what training with either would have exported)."""

from __future__ import annotations

import json
import shutil

import runtime_support

from support import ROOT
from toolroute.bench.copy_pooling import main
from toolroute.runtime.router_file import read_router_file


def test_pooling_on_copies_a_few_valued_argument_that_off_leaves_free(
    tiny_run, tmp_path_factory, tmp_path, capsys
):
    # The run's rows, but only two of them call escalate with an order id (both spans): too few
    # values on its own, copied where the catalogue's pooled order ids back it.
    rows = []
    escalations = 0
    for line in (ROOT / "examples" / "customer_support" / "train.jsonl").read_text().splitlines()[:120]:
        if '"escalate' in line and "order_id" in line:
            escalations += 1
            if escalations > 2:
                continue
        rows.append(line)
    assert escalations > 2
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["data"]["train"]["path"] = str(data)
    (run / "manifest.json").write_text(json.dumps(manifest))
    router = runtime_support.tiny_router_file(tmp_path_factory)
    assert main([str(run), str(router), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    on = read_router_file(tmp_path / "out" / "tiny-router.pool-on.gguf")
    off = read_router_file(tmp_path / "out" / "tiny-router.pool-off.gguf")
    copied_on = {entry.key for entry in on.metadata.copied(on.catalogue)}
    copied_off = {entry.key for entry in off.metadata.copied(off.catalogue)}
    assert "escalate.order_id" in copied_on - copied_off
    assert {"track_order.order_id", "request_refund.order_id"} <= copied_off < copied_on
    assert f"pool on: {len(copied_on)} copied" in printed and f"pool off: {len(copied_off)} copied" in printed
    # Everything but the marks is the file's own.
    source = read_router_file(router).metadata
    assert on.metadata.grammar == off.metadata.grammar == source.grammar
    assert on.catalogue.sha256 == off.catalogue.sha256 == read_router_file(router).catalogue.sha256
