"""Router files the latency benchmarks build when none is given: a base GGUF plus a catalogue's metadata.

An untuned router (the default base, never fine-tuned) runs the same prompt, grammar, confidence
and copy-rule code as a trained one, and its outputs are valid, but its choices are not a trained
router's (the default base answers most requests no_tool; made to call, it fills free strings up
to the grammar's caps). Per-step costs (ms per decode step, per mask, per forced byte) carry
over; per-request totals depend on what it writes. Given training rows, it carries the copied
arguments a training run would infer from them (`toolroute.train.copied`), as a trained router
of that catalogue would.
"""

from __future__ import annotations

import json
from pathlib import Path

from toolroute.runtime.gguf_header import read_gguf_metadata
from toolroute.runtime.router_file import PREFIX

UNTUNED = "untuned"


def has_router_metadata(path: Path) -> bool:
    """Whether the GGUF carries any `toolroute.*` field, read from its header: llama.cpp never opens
    a file before its metadata is checked (a crafted template runs while it loads), and a file that
    has the fields is then loaded, and checked in full, by `Router.load`."""
    return any(key.startswith(PREFIX) for key in read_gguf_metadata(path))


def embed_catalogue(
    source: Path, tools: Path, destination: Path, mode: str, train_rows: Path | None = None
) -> Path:
    """`source` (a GGUF) with router metadata for the catalogue in `tools` (default grammar
    options, the source's own chat template, no thresholds) and, with `train_rows`, the copied
    arguments training infers from those rows."""
    from toolroute.export.embed import write_router_gguf
    from toolroute.grammars import load_catalogue, render_system_prompt
    from toolroute.runtime.chat_template import ChatTemplate
    from toolroute.runtime.router_file import RouterMetadata

    catalogue = load_catalogue(tools)
    copied = ()
    if train_rows is not None:
        from toolroute.train.copied import copied_arguments, decide_copied
        from toolroute.train.formats import read_valid_examples

        examples = read_valid_examples(train_rows, catalogue).examples
        copied = copied_arguments(decide_copied(examples, catalogue))
    template = ChatTemplate.from_gguf(source)
    metadata = RouterMetadata.build(
        catalogue,
        prompt_mode=mode,
        system_prompt=render_system_prompt(catalogue, mode),
        chat_template=template.template,
        completion_suffix=template.completion_suffix(),
        base=json.dumps({"spec": str(source)}),
        manifest_sha256="0" * 64,
        copied=copied,
    )
    return write_router_gguf(source, destination, metadata)


def untuned_router(tools: Path, destination: Path, mode: str, train_rows: Path | None = None) -> Path:
    """The default base (SmolLM2-135M, Q4_1) with the catalogue in `tools` embedded."""
    from toolroute.runtime.base_models import packaged_gguf

    return embed_catalogue(packaged_gguf(), tools, destination, mode, train_rows)
