"""The HWU64 importer, on a 46-line sample of the real data (tests/fixtures/hwu64_sample.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from toolroute.cli import main
from toolroute.grammars import load_catalogue, parse_tool_call, serialize_call
from toolroute.train.hwu64 import (
    INTENT_DESCRIPTIONS,
    NO_TOOL_REASONS,
    SLOT_DESCRIPTIONS,
    import_hwu64,
)

SAMPLE = Path(__file__).parent / "fixtures" / "hwu64_sample.jsonl"
SAMPLE_LINES = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
SPLIT_OF_FOLD = {8: "train", 1: "train", 9: "valid", 10: "test"}
SAMPLE_TOOLS = [
    "alarm_query",
    "alarm_set",
    "audio_volume_down",
    "calendar_set",
    "datetime_convert",
    "iot_coffee",
    "iot_hue_lightoff",
    "play_music",
    "qa_currency",
    "transport_ticket",
    "weather_query",
]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def tool_calls(path: Path) -> list[tuple[str, str, str]]:
    """(user text, tool name, arguments string) of every tool-call row."""
    calls = []
    for row in rows(path):
        user, assistant = row["messages"]
        if "tool_calls" in assistant:
            (call,) = assistant["tool_calls"]
            calls.append((user["content"], call["function"]["name"], call["function"]["arguments"]))
    return calls


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    out = tmp_path_factory.mktemp("hwu64")
    return import_hwu64(SAMPLE, out), out


def test_writes_tools_and_splits(imported):
    report, out = imported
    assert {name: path.name for name, path in report.paths.items()} == {
        "tools": "tools.json",
        "train": "train.jsonl",
        "valid": "valid.jsonl",
        "test": "test.jsonl",
    }
    assert all(path.parent == out and path.is_file() for path in report.paths.values())
    assert sorted(p.name for p in out.iterdir()) == ["test.jsonl", "tools.json", "train.jsonl", "valid.jsonl"]


def test_tools_json_is_a_described_catalogue(imported):
    _, out = imported
    catalogue = load_catalogue(out / "tools.json")
    assert catalogue.names == SAMPLE_TOOLS
    for tool in catalogue:
        assert tool.description == INTENT_DESCRIPTIONS[tool.name]
        assert tool.required == []
        for slot, schema in tool.properties.items():
            assert schema == {"type": "string", "description": SLOT_DESCRIPTIONS[slot]}
    # Arguments by descending frequency, then name: train has 2 transport_types, 1 place_name.
    assert list(catalogue.get("transport_ticket").properties) == ["transport_type", "place_name"]
    assert list(catalogue.get("weather_query").properties) == ["weather_descriptor", "date", "place_name"]
    assert catalogue.get("audio_volume_down").properties == {}


def test_every_call_round_trips_through_the_canonical_serializer(imported):
    _, out = imported
    catalogue = load_catalogue(out / "tools.json")
    calls = [call for split in ("train", "valid", "test") for call in tool_calls(out / f"{split}.jsonl")]
    assert len(calls) == 30
    for _, name, arguments in calls:
        text = serialize_call(catalogue, name, json.loads(arguments))
        assert text == f'{{"tool":"{name}","arguments":{arguments}}}'
        assert parse_tool_call(text, catalogue) is not None


def test_rows_follow_folds_in_source_order(imported):
    _, out = imported
    for split in ("train", "valid", "test"):
        expected = [line["text"] for line in SAMPLE_LINES if SPLIT_OF_FOLD[line["fold"]] == split]
        assert [row["messages"][0]["content"] for row in rows(out / f"{split}.jsonl")] == expected


def test_slot_values_and_repeated_slot_keeps_the_first(imported):
    _, out = imported
    calls = {text: (name, args) for text, name, args in tool_calls(out / "train.jsonl")}
    assert calls["set an alarm for nine am"] == ("alarm_set", '{"time":"nine am"}')
    assert calls["Turn down volume"] == ("audio_volume_down", "{}")
    # Two place_names: the first stays, and arguments follow the schema's order.
    assert calls["if it's eight pm on the east coast what time is it in sacramento california"] == (
        "datetime_convert",
        '{"place_name":"east coast","time":"eight pm"}',
    )
    test_calls = {text: (name, args) for text, name, args in tool_calls(out / "test.jsonl")}
    assert test_calls["how many dollars are in a pound"] == ("qa_currency", '{"currency_name":"dollars"}')


def test_general_intents_become_no_tool_rows(imported):
    report, out = imported
    general = {line["text"]: line["intent"] for line in SAMPLE_LINES if line["intent"].startswith("general_")}
    seen = 0
    for split in ("train", "valid", "test"):
        for row in rows(out / f"{split}.jsonl"):
            user, assistant = row["messages"]
            if user["content"] in general:
                assert assistant == {
                    "role": "assistant",
                    "content": NO_TOOL_REASONS[general[user["content"]]],
                }
                seen += 1
            else:
                assert "content" not in assistant
    assert seen == len(general) == 16
    assert not any(name.startswith("general_") for name in report.tools)


def test_report_counts(imported):
    report, _ = imported
    assert report.lines_read == 46
    assert report.tools == SAMPLE_TOOLS
    assert report.scenarios == [
        "alarm",
        "audio",
        "calendar",
        "datetime",
        "iot",
        "play",
        "qa",
        "transport",
        "weather",
    ]
    counts = {split: (c.rows, c.tool_calls, c.no_tool) for split, c in report.splits.items()}
    assert counts == {"train": (17, 12, 5), "valid": (15, 9, 6), "test": (14, 9, 5)}
    assert report.splits["train"].tools["alarm_set"] == 2
    # Folds 8, 9 and 10 hold one line of each picked intent; fold 1 adds three train lines.
    assert report.splits["valid"].tools == {
        tool: 1 for tool in SAMPLE_TOOLS if tool not in ("audio_volume_down", "datetime_convert")
    }
    assert report.rows_dropped == {"scenario not selected": 0, "duplicate text in split": 0}
    # 3 qa_currency rows name two currencies, the datetime_convert row two places; the jokes
    # and quirky rows carry 6 slots that a no_tool row has no place for.
    assert report.slots_dropped == {"repeated slot type": 4, "slot on a no_tool row": 6}
    assert report.repeated_slot_types == {"currency_name": 3, "place_name": 1}


def test_scenarios_keep_only_their_tools(tmp_path):
    report = import_hwu64(SAMPLE, tmp_path, scenarios=["iot", "alarm"])
    assert load_catalogue(tmp_path / "tools.json").names == [
        "alarm_query",
        "alarm_set",
        "iot_coffee",
        "iot_hue_lightoff",
    ]
    assert report.scenarios == ["alarm", "iot"]
    assert report.rows_dropped["scenario not selected"] == 30 - 13
    assert sum(c.no_tool for c in report.splits.values()) == 16
    assert sum(c.tool_calls for c in report.splits.values()) == 13


@pytest.mark.parametrize(
    ("scenarios", "message"),
    [
        (["alarm", "cooking"], "unknown scenarios ['cooking']; known scenarios: alarm, audio, calendar"),
        (["general"], "'general' is not a tool scenario"),
        ([" "], "no scenarios given"),
    ],
)
def test_bad_scenarios_list_the_known_ones(tmp_path, scenarios, message):
    with pytest.raises(ValueError, match=r"known scenarios: alarm, audio, .*weather$") as info:
        import_hwu64(SAMPLE, tmp_path, scenarios=scenarios)
    assert message in str(info.value)
    assert not any(tmp_path.iterdir())


GOOD = '{"text": "wake me at six", "intent": "alarm_set", "fold": 9, "entities": []}'


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"text": "wake me", "intent": "alarm_set", "fold": 9, "entities": [}', "bad JSON: Expecting value"),
        ('["wake me"]', "expected a JSON object"),
        ('{"text": "wake me", "fold": 9, "entities": []}', "missing field 'intent'"),
        ('{"text": "wake me", "intent": "alarm_set", "fold": 11, "entities": []}', "field 'fold': "),
        ('{"text": "wake me", "intent": "alarm_set", "fold": "9", "entities": []}', "field 'fold': "),
        (
            '{"text": "wake me", "intent": "alarm_set", "fold": 9, "entities": [{"type": "time"}]}',
            "missing field 'entities[0].value'",
        ),
        (
            '{"text": "wake me at six", "intent": "alarm_set", "fold": 9,'
            ' "entities": [{"type": "time", "value": "six", "start": 10, "end": 14}]}',
            "field 'entities[0].value': 'six' is not text[10:14] = ' six'",
        ),
        (
            '{"text": "wake me", "intent": "alarm_set", "fold": 9,'
            ' "entities": [{"type": "time", "value": "me", "start": 5, "end": 9}]}',
            "field 'entities[0]': span 5:9",
        ),
    ],
)
def test_bad_line_names_file_line_and_field(tmp_path, bad, message):
    source = tmp_path / "bad.jsonl"
    source.write_text(f"{GOOD}\n\n{bad}\n{GOOD}\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        import_hwu64(source, tmp_path / "out")
    assert str(info.value).startswith(f"{source}:3: ")
    assert message in str(info.value)
    assert not (tmp_path / "out").exists()


def test_unknown_fold_message(tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text(GOOD.replace('"fold": 9', '"fold": 0') + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: field 'fold': .*unknown fold 0 \(expected 1-10\)"):
        import_hwu64(source, tmp_path / "out")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            GOOD.replace("alarm_set", "alarm_snooze"),
            "intents without a description (INTENT_DESCRIPTIONS): ['alarm_snooze']",
        ),
        (GOOD.replace("alarm_set", "general_sigh"), "general intents without a no_tool reason"),
        (
            GOOD.replace(
                '"entities": []', '"entities": [{"type": "mood", "value": "six", "start": 11, "end": 14}]'
            ),
            "slot types without a description (SLOT_DESCRIPTIONS): ['mood']",
        ),
    ],
)
def test_undescribed_intent_or_slot_fails(tmp_path, line, message):
    source = tmp_path / "new.jsonl"
    source.write_text(f"{GOOD}\n{line}\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        import_hwu64(source, tmp_path / "out")
    assert message in str(info.value)


def test_duplicate_text_within_a_split_is_dropped(tmp_path):
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    alarm = next(line for line in lines if '"set an alarm for nine am"' in line)
    same_split = alarm.replace('"fold": 1', '"fold": 8')
    other_split = alarm.replace('"fold": 1', '"fold": 10')
    source = tmp_path / "dup.jsonl"
    source.write_text("\n".join([*lines, same_split, other_split]) + "\n", encoding="utf-8")
    report = import_hwu64(source, tmp_path / "out")
    assert report.rows_dropped["duplicate text in split"] == 1
    assert report.splits["train"].rows == 17
    assert report.splits["test"].rows == 15


def test_rerun_is_byte_identical(imported, tmp_path):
    first, out = imported
    second = import_hwu64(SAMPLE, tmp_path)
    for name, path in first.paths.items():
        assert second.paths[name].read_bytes() == path.read_bytes()
    assert second.model_dump(exclude={"out_dir", "paths"}) == first.model_dump(exclude={"out_dir", "paths"})
    assert (out / "tools.json").read_text(encoding="utf-8").endswith("]\n")


def test_the_data_command_imports(tmp_path, capsys):
    status = main(["data", "import-hwu64", str(SAMPLE), "--out", str(tmp_path), "--scenarios", "alarm, iot"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "4 tools from 2 scenarios" in printed
    assert "scenario not selected 17" in printed
    assert len(load_catalogue(tmp_path / "tools.json")) == 4


def test_the_data_command_requires_out():
    with pytest.raises(SystemExit):
        main(["data", "import-hwu64", str(SAMPLE)])


def test_the_data_command_reports_errors(tmp_path, capsys):
    assert (
        main(["data", "import-hwu64", str(SAMPLE), "--out", str(tmp_path / "no"), "--scenarios", "nope"]) == 2
    )
    assert "error: unknown scenarios ['nope']" in capsys.readouterr().err


def test_descriptions_are_sentences_and_reasons_lowercase():
    assert all(text.endswith(".") and text[0].isupper() for text in INTENT_DESCRIPTIONS.values())
    assert all(text and not text.endswith(".") for text in SLOT_DESCRIPTIONS.values())
    assert all(reason == reason.lower() and len(reason) <= 30 for reason in NO_TOOL_REASONS.values())
    assert not any(intent.startswith("general_") for intent in INTENT_DESCRIPTIONS)
