"""Copied arguments on the training side: inference on the rows as given, overrides, the manifest,
and what export and `toolroute inspect` make of them (no model is trained here)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import pytest
import runtime_support
from pydantic import BaseModel, Field

from toolroute.cli import main as cli_main
from toolroute.grammars import Catalogue, Copied, CopiedArgument
from toolroute.runtime.router_file import FORMAT_VERSION
from toolroute.train.config import load_config
from toolroute.train.copied import copied_arguments, decide_copied, describe, parse_overrides
from toolroute.train.examples import Example, Target
from toolroute.train.run_dir import RunManifest


class Play(BaseModel):
    """Play music."""

    artist: str | None = None
    playlist: str | None = None
    mood: Annotated[str, Field(json_schema_extra={"x-toolroute-copy": False})] | None = None
    genre: Literal["pop", "rock"] | None = None


class Book(BaseModel):
    """Book a table."""

    place: Annotated[str, Copied]
    party: int = 2


CATALOGUE = Catalogue.from_tools([Play, Book])


def _example(request: str, tool: str, **arguments) -> Example:
    return Example(request=request, target=Target(tool=tool, arguments=arguments), source="t:1")


def _rows() -> list[Example]:
    rows = [
        _example(f"play something by Artist {i}", "play", artist=f"Artist {i}", mood="calm")
        for i in range(19)
    ]
    rows.append(_example("play some Queen", "play", artist="queen", mood="calm"))  # lowercased: not a span
    rows += [_example(f"put on playlist {i}", "play", playlist=f"my list {i}") for i in range(10)]  # invented
    rows += [_example("play pop", "play", genre="pop") for _ in range(10)]
    rows += [_example("a table please", "book", place="somewhere")]  # declared: no data needed
    return rows


def test_inference_on_the_rows_as_given_with_declarations_and_labels_kept():
    decisions = {(d.tool, d.argument): d for d in decide_copied(_rows(), CATALOGUE)}
    artist = decisions[("play", "artist")]
    assert artist.copied and artist.source == "inferred" and artist.share == 0.95 and artist.values == 20
    assert not decisions[("play", "playlist")].copied and decisions[("play", "playlist")].share == 0.0
    assert decisions[("play", "mood")].copied is False and decisions[("play", "mood")].source == "declared"
    assert not decisions[("play", "genre")].copied  # an enum is a label, never inferred
    assert decisions[("book", "place")].copied and decisions[("book", "place")].source == "declared"
    stricter = {(d.tool, d.argument): d for d in decide_copied(_rows(), CATALOGUE, share=0.96)}
    assert not stricter[("play", "artist")].copied
    assert [c.key for c in copied_arguments(decide_copied(_rows(), CATALOGUE))] == [
        "play.artist",
        "book.place",
    ]


def test_few_values_are_copied_only_where_the_catalogue_pooled_says_spans():
    spans_only = [row for row in _rows() if row.target.arguments.get("playlist") is None]
    few = [
        _example("play Blue Train", "play", playlist="Blue Train"),
        _example("play x", "play", playlist="x"),
    ]
    decisions = {(d.tool, d.argument): d for d in decide_copied(spans_only + few, CATALOGUE)}
    playlist = decisions[("play", "playlist")]
    # 2 values of its own, both spans; the pool (artist and playlist: 21 of 22 spans) holds.
    assert playlist.copied and playlist.pooled and playlist.source == "inferred" and playlist.values == 2
    assert not decisions[("play", "artist")].pooled  # 20 values of its own: no pooling needed
    assert "copied (inferred, few values: the catalogue pooled)" in "\n".join(describe(decisions.values()))
    off = {(d.tool, d.argument): d for d in decide_copied(spans_only + few, CATALOGUE, pool=False)}
    assert not off[("play", "playlist")].copied
    # One of its values not a span: never pooled.
    mixed = [*few, _example("play y", "play", playlist="my y")]
    assert not {(d.tool, d.argument): d for d in decide_copied(spans_only + mixed, CATALOGUE)}[
        ("play", "playlist")
    ].copied
    # The full rows: 10 invented playlists pull the pool to 19 of 30: nothing is pooled.
    assert not any(d.pooled for d in decide_copied(_rows() + few, CATALOGUE))


def test_the_config_forces_arguments_on_and_off_and_refuses_what_cannot_be_copied():
    overrides = parse_overrides(["play.playlist=on", "book.place=off"], CATALOGUE)
    decisions = {(d.tool, d.argument): d for d in decide_copied(_rows(), CATALOGUE, overrides=overrides)}
    assert decisions[("play", "playlist")].copied and decisions[("play", "playlist")].source == "config"
    assert not decisions[("book", "place")].copied and decisions[("book", "place")].source == "config"
    with pytest.raises(ValueError, match="tool 'book' has no string argument 'party'"):
        parse_overrides(["book.party=on"], CATALOGUE)
    with pytest.raises(ValueError, match=r"is not tool\.argument=on"):
        parse_overrides(["book.place=maybe"], CATALOGUE)
    config = load_config(None, {"name": "r", "data": "x.jsonl", "copy_arguments": ["play.artist=off"]})
    assert config.copy_arguments == ["play.artist=off"] and config.copy_share == 0.95
    assert 'copy_arguments = ["play.artist=off"]' in config.to_toml()


def test_a_manifest_without_copied_arguments_still_reads():
    fields = set(RunManifest.model_fields) - {"copied_arguments"}
    assert RunManifest.model_fields["copied_arguments"].default == [] and "catalogue" in fields


def test_inspect_lists_the_copied_arguments_and_why(tmp_path_factory, capsys):
    copied = (
        CopiedArgument(tool="track_order", argument="order_id", source="declared"),
        CopiedArgument(tool="request_refund", argument="order_id", source="inferred", share=0.97, values=120),
    )
    metadata = runtime_support.router_metadata(copied=copied)
    path = runtime_support.tiny_router_file(
        tmp_path_factory, "tiny-inspect-copied.gguf", **metadata.model_dump()
    )
    assert cli_main(["inspect", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["format_version"] == FORMAT_VERSION
    assert shown["copied_arguments"] == {
        "track_order.order_id": "declared",
        "request_refund.order_id": "inferred (97.0% of 120 training values are spans)",
    }
