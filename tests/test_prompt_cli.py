"""System prompts, the output JSON Schema, golden grammars and the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support import CUSTOMER_SUPPORT_TOOLS, KITCHEN_SINK_TOOLS, ROOT, all_catalogues, values
from toolroute.cli import main
from toolroute.grammars import (
    GrammarOptions,
    PromptMode,
    catalogue_gbnf,
    load_catalogue,
    output_json_schema,
    render_system_prompt,
    serialize_call,
)

SUPPORT = load_catalogue(CUSTOMER_SUPPORT_TOOLS)


def test_prompt_modes_get_shorter_and_keep_what_they_promise():
    prompts = {mode: render_system_prompt(SUPPORT, mode) for mode in PromptMode}
    assert len(prompts["full"]) > len(prompts["compact"]) > len(prompts["names"]) > len(prompts["none"])
    assert "Look up where an order is" in prompts["full"]
    assert "order_id: The order number" in prompts["full"]
    assert "Look up where an order is" not in prompts["compact"]
    assert '- request_refund(order_id: string, reason?: "damaged"|' in prompts["compact"]
    assert prompts["names"].endswith("Tools: track_order, request_refund, escalate")
    assert "track_order" not in prompts["none"]
    assert all('{"tool":"no_tool","reason":"..."}' in p for p in prompts.values())


def test_prompt_signatures_cover_the_subset():
    prompt = render_system_prompt(load_catalogue(KITCHEN_SINK_TOOLS), "compact")
    assert "party_size: integer 1..20" in prompt
    assert "date: date" in prompt
    assert "delta?: number >-3 <3" in prompt
    assert "schedule?: {at: date-time, celsius: number 5..30}[0..3]" in prompt
    assert 'channel?: "sms"' in prompt
    assert "reply_to: string[0..20] | integer >=0 | null" in prompt
    assert "- get_weather()" in prompt


@pytest.mark.parametrize("name", ["customer_support", "kitchen_sink"])
def test_golden_grammars_are_current(name):
    tools = CUSTOMER_SUPPORT_TOOLS if name == "customer_support" else KITCHEN_SINK_TOOLS
    golden = ROOT / "grammars" / "golden" / f"{name}.gbnf"
    assert catalogue_gbnf(load_catalogue(tools)) == golden.read_text(), (
        "run `make goldens` and review the diff"
    )


CATALOGUES = all_catalogues()
OPTIONS = GrammarOptions(max_string_length=20, max_reason_length=20, max_array_items=3)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_output_schema_accepts_canonical_calls(data):
    name = data.draw(st.sampled_from(sorted(CATALOGUES)))
    catalogue = CATALOGUES[name]
    tool = data.draw(st.sampled_from(catalogue.names))
    text = serialize_call(catalogue, tool, data.draw(values(catalogue.get(tool).parameters, OPTIONS)))
    jsonschema.validate(json.loads(text), output_json_schema(catalogue, OPTIONS))


def test_output_schema_rejects_what_parse_rejects():
    schema = output_json_schema(SUPPORT)
    for bad in (
        {"tool": "track_order", "arguments": {}},
        {"tool": "no_tool", "reason": ""},
        {"tool": "escalate", "arguments": {"topic": "legal", "urgency": "soon"}},
        {"tool": "track_order", "arguments": {"order_id": "A", "x": 1}},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def _functions_module(tmp_path):
    path = tmp_path / "fns.py"
    path.write_text(
        "from typing import Literal\n\n"
        "def track_order(order_id: str) -> None:\n    '''Look up where an order is.'''\n\n"
        "def escalate(summary: str, urgency: Literal['low', 'high'] = 'low') -> None:\n"
        "    '''Hand over to a human.'''\n"
    )
    return path


def test_cli_grammar_and_prompt_for_all_three_forms(tmp_path, capsys):
    json_path = tmp_path / "tools.json"
    json_path.write_text(json.dumps(SUPPORT.to_openai()))
    for tools in (str(CUSTOMER_SUPPORT_TOOLS), str(json_path), str(_functions_module(tmp_path))):
        assert main(["grammar", tools]) == 0
        assert capsys.readouterr().out.count("root ::= call-track-order") == 1
        assert main(["prompt", tools, "--mode", "compact"]) == 0
        assert "- track_order(order_id: string)" in capsys.readouterr().out
    assert main(["prompt", str(json_path), "--mode", "full"]) == 0
    assert capsys.readouterr().out == render_system_prompt(SUPPORT, "full") + "\n"


def test_cli_writes_files_and_checks_with_llama_cpp(tmp_path, capsys):
    out = tmp_path / "g" / "router.gbnf"
    assert (
        main(["grammar", str(CUSTOMER_SUPPORT_TOOLS), "--check", "--max-string-length", "64", "-o", str(out)])
        == 0
    )
    assert "grammar loads in llama.cpp" in capsys.readouterr().err
    assert "char{0,64}" in out.read_text()
    assert [p.name for p in out.parent.iterdir()] == ["router.gbnf"]  # no temp file left behind
    schema_out = tmp_path / "schema.json"
    assert main(["schema", str(CUSTOMER_SUPPORT_TOOLS), "-o", str(schema_out)]) == 0
    assert json.loads(schema_out.read_text()) == output_json_schema(SUPPORT)


def test_cli_errors_are_one_line_with_the_cause(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(
        '[{"type":"function","function":{"name":"a","parameters":{"type":"object",'
        '"properties":{"e":{"type":"string","format":"email"}}}}}]'
    )
    assert main(["grammar", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("toolroute grammar: error: tool 'a', field 'e': keyword 'format'")
    assert main(["prompt", str(tmp_path / "missing.py")]) == 2
    assert "no such tools module" in capsys.readouterr().err


def test_help_lists_only_working_commands():
    result = subprocess.run(
        [sys.executable, "-m", "toolroute", "--help"], capture_output=True, text=True, check=True
    )
    # A command's name is indented 4 spaces; wrapped help text is indented further.
    listed = [line.split()[0] for line in result.stdout.splitlines() if re.match(r"    \S", line)]
    assert listed == [
        "grammar", "prompt", "schema", "data", "train", "route", "serve", "export", "inspect", "eval",
        "bench", "bench-modes", "bench-classical",
    ]  # fmt: skip
    for command in listed:  # each one parses its own arguments: it is wired to a handler
        sub = subprocess.run(
            [sys.executable, "-m", "toolroute", command, "--help"], capture_output=True, text=True
        )
        assert sub.returncode == 0 and f"usage: toolroute {command}" in sub.stdout, command
