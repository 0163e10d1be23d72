"""Small-data augmentation (`toolroute data augment`, `train --augment`): span values swapped
consistently, seeded, capped, never an eval request, bad input named by file and line."""

from __future__ import annotations

import json
from collections import Counter
from typing import Literal

import pytest
from pydantic import BaseModel

from support import CUSTOMER_SUPPORT_TOOLS, ROOT
from toolroute.cli import main as cli_main
from toolroute.grammars import Catalogue, is_span, load_catalogue
from toolroute.train.augment import augment_examples, value_pools
from toolroute.train.copied import value_at
from toolroute.train.examples import Example, Target, normalize_request
from toolroute.train.formats import read_examples


class Venue(BaseModel):
    city: str


class Play(BaseModel):
    """Play music."""

    artist: str | None = None
    playlist: str | None = None
    genre: Literal["pop", "rock"] | None = None


class Book(BaseModel):
    """Book a table."""

    venue: Venue
    party: int = 2


CATALOGUE = Catalogue.from_tools([Play, Book])
ARTISTS = ["Queen", "Björk", "Nina Simone", "Miles Davis", "Sade", 'The "Band"']


def _example(request: str, tool: str, line: int, **arguments) -> Example:
    return Example(request=request, target=Target(tool=tool, arguments=arguments), source=f"t.jsonl:{line}")


def _rows() -> list[Example]:
    rows = [
        _example(f"play {artist} on my {mood} playlist", "play", i, artist=artist, playlist=f"{mood}")
        for i, (artist, mood) in enumerate(
            zip(ARTISTS, ["calm", "gym", "late night", "jazz", "sunday", "rock"], strict=True)
        )
    ]
    rows.append(_example("play some pop", "play", 10, genre="pop"))  # a label: never swapped
    rows.append(_example("play Sade by Sade", "play", 11, artist="Sade"))  # twice in the request: ambiguous
    rows.append(_example("play something by queen", "play", 12, artist="Queen"))  # not a span
    # Different words around each city: swapping one into another's sentence makes a new request.
    books = [
        ("a table in {} please", "Oslo"),
        ("dinner in {} tonight", "Lima"),
        ("somewhere in {} for two", "Rome"),
    ]
    rows += [_example(text.format(c), "book", 20 + i, venue={"city": c}) for i, (text, c) in enumerate(books)]
    rows.append(
        Example(
            request="tell me a joke", target=Target(tool="no_tool", reason="chit-chat"), source="t.jsonl:30"
        )
    )
    return rows


def test_values_are_swapped_in_the_request_and_the_call_together_and_stay_spans():
    rows = _rows()
    result = augment_examples(rows, CATALOGUE, per_row=3, seed=1)
    assert result.added and result.counts.rows_in == len(rows) == 13
    by_source = {row.source: row for row in rows}
    pools = value_pools(rows, CATALOGUE)
    assert "Queen" in pools[("play", "artist")] and ("play", "genre") not in pools  # spans only; no labels
    assert pools[("book", "venue.city")] == ["Lima", "Oslo", "Rome"]  # nested paths too
    for added in result.added:
        source = by_source[added.source.split(" (augmented")[0]]
        assert added.target.tool == source.target.tool and not added.followup
        assert normalize_request(added.request) not in {normalize_request(r.request) for r in rows}
        rebuilt = source.request
        for path in ("artist", "playlist", "venue.city"):
            old, new = value_at(source.target.arguments, path), value_at(added.target.arguments, path)
            if old is None:
                assert new is None
                continue
            assert is_span(new, added.request)  # spans are still spans
            assert new in pools[(source.target.tool, path)]  # a value seen in training for that argument
            rebuilt = rebuilt.replace(old, new)
        assert rebuilt == added.request  # the request changed exactly where the values did
        CATALOGUE.arguments_model(added.target.tool).model_validate(added.target.arguments)
    sources = {a.source.split(" (augmented")[0] for a in result.added}
    # Not the label row, the ambiguous "Sade by Sade", the non-span "queen" or the no_tool row.
    assert sources.isdisjoint({"t.jsonl:10", "t.jsonl:11", "t.jsonl:12", "t.jsonl:30"})
    assert result.counts.per_argument["play.artist"] > 0 and result.counts.per_argument["book.venue.city"] > 0
    assert "play.genre" not in result.counts.per_argument
    assert result.counts.rows_added == len(result.added) and result.counts.source_rows == len(sources)


def test_seeds_reproduce_and_caps_hold():
    rows = _rows()
    first = augment_examples(rows, CATALOGUE, per_row=2, seed=5)
    again = augment_examples(rows, CATALOGUE, per_row=2, seed=5)
    other = augment_examples(rows, CATALOGUE, per_row=2, seed=6)
    assert [e.model_dump() for e in first.added] == [e.model_dump() for e in again.added]
    assert first.counts == again.counts
    assert [e.request for e in first.added] != [e.request for e in other.added]
    per_source = Counter(row.source.split(" (augmented")[0] for row in first.added)
    assert max(per_source.values()) == 2 and len(first.added) == 2 * len(per_source)
    capped = augment_examples(rows, CATALOGUE, per_row=2, cap=3, seed=5)
    assert len(capped.added) == capped.counts.rows_added == 3
    assert capped.counts.skipped_by_cap == len(first.added) - 3
    assert {e.request for e in capped.added} <= {e.request for e in first.added}  # a sample, same rows
    assert augment_examples(rows, CATALOGUE, per_row=2, cap=0, seed=5).added == []
    with pytest.raises(ValueError, match="per_row must be at least 1"):
        augment_examples(rows, CATALOGUE, per_row=0)


def test_no_new_request_equals_an_eval_request_and_eval_values_are_never_used():
    rows = _rows()
    wanted = augment_examples(rows, CATALOGUE, per_row=5, seed=3)
    # An eval set holding (in other case and spacing) requests a swap would make, and a value of its own.
    taken = [row.request for row in wanted.added[:4]]
    evaluation = [_example(f"  {r.upper()} ", "play", 100 + i) for i, r in enumerate(taken)]
    evaluation.append(
        _example("play Prince on my calm playlist", "play", 200, artist="Prince", playlist="calm")
    )
    result = augment_examples(rows, CATALOGUE, per_row=5, seed=3, eval_examples=evaluation)
    held_out = {normalize_request(e.request) for e in evaluation}
    assert result.added and all(normalize_request(e.request) not in held_out for e in result.added)
    assert result.counts.skipped_eval_overlap >= 4
    assert all("Prince" not in e.request for e in result.added)


def test_customer_support_rows_augment_through_the_cli_and_read_back(tmp_path, capsys):
    data = ROOT / "examples" / "customer_support"
    source = tmp_path / "train.jsonl"
    source.write_text("\n".join((data / "train.jsonl").read_text().splitlines()[:40]) + "\n")
    out = tmp_path / "augmented.jsonl"
    command = ["data", "augment", str(source), "--tools", str(CUSTOMER_SUPPORT_TOOLS), "--out", str(out),
               "--per-row", "2", "--cap", "30", "--seed", "9",
               "--eval", str(data / "eval.jsonl")]  # fmt: skip
    assert cli_main(command) == 0
    counts = json.loads(capsys.readouterr().out)
    assert (
        counts["rows_in"] == 40 and counts["rows_added"] == 30 and sum(counts["per_argument"].values()) >= 30
    )
    lines = out.read_text().splitlines()
    assert lines[:40] == source.read_text().splitlines()  # the rows as given, unchanged, first
    back = read_examples(out, load_catalogue(str(CUSTOMER_SUPPORT_TOOLS)))
    assert not back.errors and len(back.examples) == 70
    assert cli_main(["data", "check", str(out), "--tools", str(CUSTOMER_SUPPORT_TOOLS), "--eval",
                     str(data / "eval.jsonl")]) == 0  # fmt: skip
    assert "overlap with train: 0 exact, 0 case/whitespace-normalised" in capsys.readouterr().out
    assert cli_main(command) == 0 and out.read_text().splitlines() == lines  # same seed, same file


def test_bad_input_is_refused_naming_the_file_and_line(tmp_path, capsys):
    data = ROOT / "examples" / "customer_support"
    good = (data / "train.jsonl").read_text().splitlines()[:3]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([good[0], '{"messages": [}', good[1]]) + "\n")
    out = tmp_path / "out.jsonl"
    tools = ["--tools", str(CUSTOMER_SUPPORT_TOOLS)]
    assert cli_main(["data", "augment", str(bad), *tools, "--out", str(out)]) == 2
    assert f"{bad}:2: bad JSON" in capsys.readouterr().err and not out.exists()
    fine = tmp_path / "fine.jsonl"
    fine.write_text("\n".join(good) + "\n")
    assert cli_main(["data", "augment", str(fine), *tools, "--out", str(out), "--eval", str(bad)]) == 2
    assert f"{bad}:2: bad JSON" in capsys.readouterr().err and not out.exists()
    assert cli_main(["data", "augment", str(fine), *tools, "--out", str(fine)]) == 2
    assert "--out must differ from the input" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["data", "augment", str(fine), *tools, "--out", str(out), "--per-row", "0"])
    assert "--per-row: must be at least 1, got 0" in capsys.readouterr().err


def test_train_augment_adds_rows_in_memory_and_records_the_counts(tmp_path, tiny_base):
    pytest.importorskip("torch")
    from toolroute.train.config import TrainConfig
    from toolroute.train.trainer import train

    data = ROOT / "examples" / "customer_support"
    for name, count in (("train", 24), ("eval", 8)):
        lines = (data / f"{name}.jsonl").read_text().splitlines()[:count]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    config = TrainConfig(
        name="augmented", data=tmp_path / "train.jsonl", eval=tmp_path / "eval.jsonl",
        tools=str(CUSTOMER_SUPPORT_TOOLS), base=str(tiny_base), runs_dir=tmp_path / "runs", augment=2,
        max_steps=1,
    )  # fmt: skip
    manifest = train(config)
    counts = manifest.augmentation
    assert counts is not None and counts.rows_in == 24 and counts.per_row == 2 and counts.seed == 13
    assert 0 < counts.rows_added <= 48 and sum(counts.per_argument.values()) >= counts.rows_added
    assert manifest.data["train"].examples == 24 + counts.rows_added  # trained from, augmented included
    assert manifest.plan is not None and manifest.plan.rows == 24 + counts.rows_added
    assert manifest.config["augment"] == 2
    # Copied arguments are decided on the rows as given: 24 rows' values, not the augmented ones.
    assert sum(d.values for d in manifest.copied_arguments if d.argument == "order_id") < 24
