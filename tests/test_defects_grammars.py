"""Regressions for issue #11, grammar side: bounded schema normalisation (item 1), patterns whose
grammar llama.cpp refused (item 7), and tools specs whose type was guessed by importing (item 10).
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from support import accepts
from toolroute.bench.crafted_schemas import deep_items, deep_items_json, double_ref_chain, wide_any_of
from toolroute.grammars import (
    Catalogue,
    CatalogueError,
    GrammarOptions,
    NoTool,
    ToolCall,
    catalogue_gbnf,
    load_catalogue,
    parse_tool_call,
)
from toolroute.grammars.errors import SchemaError
from toolroute.grammars.llama_limits import GrammarLimitError, check_llama_limits
from toolroute.grammars.schema import MAX_SCHEMA_NODES
from toolroute.runtime.grammar_engine import GrammarLoadError, check_grammar_loads

# -- item 1: normalisation is bounded in size, depth and time --------------------------------------


def _timed(build: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    try:
        return build(), time.perf_counter() - start
    except Exception as exc:  # returned, so that the test can check both the error and the time
        return exc, time.perf_counter() - start


@pytest.mark.parametrize("levels", [14, 28])
def test_doubling_ref_chain_is_refused_at_once(levels):
    # Each level refers to the next twice: 2**levels inlined copies. 14 levels took 0.45 s and built
    # 1.3 MB; 28 levels never finished.
    result, seconds = _timed(lambda: Catalogue.from_json(json.dumps(double_ref_chain(levels))))
    assert isinstance(result, SchemaError), result
    assert result.tool == "crafted" and result.keyword == "$ref"
    assert f"{MAX_SCHEMA_NODES:,} nodes" in str(result)
    assert seconds < 2


def test_a_def_used_many_times_is_still_inlined_everywhere():
    class Point(BaseModel):
        x: int
        y: int

    class Path3(BaseModel):
        start: Point
        middle: Point
        end: Point

    (spec,) = Catalogue.from_tools([Path3]).tools
    point = {
        "type": "object",
        "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
        "required": ["x", "y"],
    }
    assert spec.properties == {"start": point, "middle": point, "end": point}


def test_wide_any_of_is_refused_before_any_work():
    # 60,000 distinct branches (1 MiB) took ~100 s of quadratic de-duplication.
    tools = wide_any_of(30_000)
    result, seconds = _timed(lambda: Catalogue.from_openai(tools))
    assert isinstance(result, SchemaError) and result.keyword == "anyOf", result
    assert seconds < 2


def test_any_of_deduplication_is_linear():
    # 19,000 distinct branches fit in the budget; pairwise comparison took ~10 s here.
    tools = wide_any_of(19_000)
    tools[0]["function"]["parameters"]["properties"]["x"]["anyOf"] += [{"const": 5}, {"const": 7}]
    result, seconds = _timed(lambda: Catalogue.from_openai(tools))
    assert isinstance(result, Catalogue), result
    branches = result.get("crafted").properties["x"]["anyOf"]
    assert [b["const"] for b in branches] == list(range(19_000))  # duplicates dropped, order kept
    assert seconds < 3


def test_the_budget_is_shared_by_the_tools_of_a_catalogue():
    one = wide_any_of(1_000)[0]["function"]
    tools = [{"type": "function", "function": {**one, "name": f"t{i}"}} for i in range(30)]
    with pytest.raises(SchemaError, match=r"tool 't19', field 'x': keyword 'anyOf'"):
        Catalogue.from_openai(tools)
    assert len(Catalogue.from_openai(tools[:15])) == 15


def test_deep_nesting_is_a_schema_error_not_a_recursion_error():
    with pytest.raises(SchemaError, match=r"field 'x\[\]\[\].*nest more than 64 levels"):
        Catalogue.from_openai(deep_items(50_000))
    with pytest.raises(SchemaError, match="nest more than 64 levels"):
        Catalogue.from_json(deep_items_json(900))  # still readable JSON
    with pytest.raises(CatalogueError, match="JSON nested too deeply"):
        Catalogue.from_json(deep_items_json(50_000))
    assert Catalogue.from_openai(deep_items(40)).names == ["crafted"]


def test_reused_defs_cannot_nest_past_the_depth_limit():
    # D0 -> D1 -> ... -> D20 is about 42 levels ($ref hops count); used once at the top and once
    # under 30 more arrays, the second use nests past 64 although D0 was worked out without trouble.
    defs: dict[str, Any] = {"D20": {"type": "string"}}
    for i in range(20):
        defs[f"D{i}"] = {"type": "array", "items": {"$ref": f"#/$defs/D{i + 1}"}}
    deep: dict[str, Any] = {"$ref": "#/$defs/D0"}
    for _ in range(30):
        deep = {"type": "array", "items": deep}
    parameters = {"type": "object", "properties": {"a": {"$ref": "#/$defs/D0"}, "b": deep}, "$defs": defs}
    tool = [{"type": "function", "function": {"name": "t", "parameters": parameters}}]
    with pytest.raises(SchemaError, match=r"field 'b\[\]\[\].*nest more than 64 levels"):
        Catalogue.from_openai(tool)


def test_deeply_nested_values_in_errors_do_not_break_the_message():
    value: list[Any] = []
    for _ in range(50_000):
        value = [value]
    parameters = {"type": "object", "properties": {"x": {"type": "string", "enum": [value]}}}
    with pytest.raises(SchemaError, match=r"value \[\[\[\[\.\.\.\]\]\]\] is not of type"):
        Catalogue.from_openai([{"type": "function", "function": {"name": "t", "parameters": parameters}}])


def test_deeply_nested_pattern_groups_are_a_schema_error():
    parameters = {"type": "object", "properties": {"x": {"type": "string", "pattern": "(" * 500 + ")" * 500}}}
    with pytest.raises(SchemaError, match="keyword 'pattern': groups nested more than"):
        Catalogue.from_openai([{"type": "function", "function": {"name": "t", "parameters": parameters}}])


# -- item 7: patterns load in llama.cpp; what llama.cpp refuses is refused at schema time ---------

EMAIL = r"^[a-z0-9._%+-]+@([a-z0-9-]+\.)+[a-z]{2,}$"
WORDS = r"^(\w+ )*\w+$"


def _one_tool(name: str, properties: dict[str, Any]) -> list[dict[str, Any]]:
    parameters = {"type": "object", "properties": properties, "required": list(properties)}
    return [{"type": "function", "function": {"name": name, "parameters": parameters}}]


def _pattern_tool(pattern: str) -> Catalogue:
    return Catalogue.from_openai(_one_tool("t", {"p": {"type": "string", "pattern": pattern}}))


def _call(value: str) -> str:
    return '{"tool":"t","arguments":{"p":' + json.dumps(value) + "}}"


@pytest.mark.parametrize(
    "pattern, good, bad",
    [
        (EMAIL, ["jane.doe@mail.example.com", "a@b.co"], ["jane@example", "jane@@example.com", "@b.co"]),
        (WORDS, ["hello", "hello big world"], ["hello  world", "hello ", " hello"]),
        (r"^((a+b)+c)+$", ["abc", "aabababcabc"], ["ab", "abcc", "cab"]),
    ],
)
@pytest.mark.parametrize("max_string_length", [256, 2000])
def test_nested_repeat_patterns_load_in_llama_cpp(base_vocab, pattern, good, bad, max_string_length):
    # Each repeat was capped at the string cap inside a repeated group: 256 x 256 rules, which
    # llama.cpp refuses ("exceeds sane defaults") only when a trained router is loaded.
    gbnf = catalogue_gbnf(_pattern_tool(pattern), GrammarOptions(max_string_length=max_string_length))
    check_grammar_loads(base_vocab, gbnf)
    for value in good:
        assert accepts(base_vocab, gbnf, _call(value)), value
    for value in bad:
        assert not accepts(base_vocab, gbnf, _call(value)), value


NESTED_PATTERNS = [EMAIL, WORDS, r"^((a+b)+c)+$", r"(x[0-9]*,)+y"]


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_nested_pattern_grammars_accept_every_matching_string(base_vocab, data):
    pattern = data.draw(st.sampled_from(NESTED_PATTERNS), label="pattern")
    options = GrammarOptions(max_string_length=40)
    value = data.draw(
        st.from_regex(re.compile(pattern, re.ASCII), fullmatch=True).filter(
            lambda s: len(s) <= options.max_string_length and not s.endswith("\n")
        ),
        label="value",
    )
    tokens = base_vocab.tokenize(_call(value).encode("utf-8"), add_bos=False, special=False)
    assume(base_vocab.detokenize(tokens) == _call(value).encode("utf-8"))  # as test_grammar_llama
    assert accepts(base_vocab, catalogue_gbnf(_pattern_tool(pattern), options), _call(value)), value


def test_nested_pattern_grammars_only_write_matching_strings(base_vocab):
    from test_grammar_llama import _Walker

    seed = int(os.environ.get("TOOLROUTE_WALK_SEED", random.randrange(2**32)))
    walker = _Walker(base_vocab, seed)
    checked = 0
    for pattern in NESTED_PATTERNS:
        catalogue = _pattern_tool(pattern)
        gbnf = catalogue_gbnf(catalogue, GrammarOptions(max_string_length=12))
        for _ in range(15):
            text = walker.walk(gbnf)
            parsed = parse_tool_call(text, catalogue)
            if isinstance(parsed, NoTool):
                continue
            assert isinstance(parsed, ToolCall), f"seed {seed}: {text!r}"
            assert re.search(pattern, parsed.arguments["p"]), f"seed {seed}: {text!r}"
            checked += 1
    assert checked >= 15, f"seed {seed}: only {checked} walks wrote a call"


def test_rounds_of_a_repeat_are_capped_by_what_fits_in_the_string_cap(base_vocab):
    gbnf = catalogue_gbnf(_pattern_tool(WORDS), GrammarOptions(max_string_length=12))
    assert accepts(base_vocab, gbnf, _call("a b c d e f g"))  # 6 rounds of two characters, then one
    assert not accepts(base_vocab, gbnf, _call("a b c d e f g h"))  # a seventh round cannot fit


@pytest.mark.parametrize(
    "grammar",
    [
        'root ::= ("a"{0,256}){0,256}',  # what toolroute wrote for ([a]+)+
        'root ::= ("a" ("b"){0,40}){50}',  # 1 + 1 + 40 rules x 50
        'root ::= ("a" later){1000}\nlater ::= "b"',  # a first-seen name counts inside the group
        'root ::= "a"{2001}',
        'root ::= ("a" ("b"){0,39}){1,50}',  # 41 x 50 = 2050
        'root ::= x{0} "a"',
        'root ::= ("a" ("b"){0,38}){50}',  # 40 x 50 = 2000: allowed
        'root ::= ("a" later){1000}\nlater ::= "b"'.replace("{1000}", "{999}"),
        'root ::= later ("a" later){1000}\nlater ::= "b"',  # named before the group: counts once
        'root ::= "a"{2000} ("b"{0,2000})?',
    ],
)
def test_size_check_agrees_with_llama_cpp(base_vocab, grammar):
    try:
        check_grammar_loads(base_vocab, grammar)
        loads = True
    except GrammarLoadError:
        loads = False
    try:
        check_llama_limits(grammar)
        passes = True
    except GrammarLimitError:
        passes = False
    assert passes == loads


def test_size_check_refuses_what_llama_cpp_would_read_as_unbounded():
    with pytest.raises(GrammarLimitError, match="read it as unbounded"):
        check_llama_limits('root ::= "a"{0,2001}')


def test_pattern_beyond_llama_cpp_limits_is_refused_at_schema_time():
    with pytest.raises(SchemaError) as error:
        _pattern_tool(r"^a{2001}$")
    assert (error.value.tool, error.value.field, error.value.keyword) == ("t", "p", "pattern")
    assert "2000" in error.value.detail


def test_caps_stop_at_llama_cpp_repetition_limit():
    with pytest.raises(ValidationError):
        GrammarOptions(max_string_length=2001)
    GrammarOptions(max_string_length=2000, max_reason_length=2000, max_array_items=2000)


def test_grammar_beyond_llama_cpp_limits_names_the_tool(base_vocab):
    # An array of booleans repeats the group ("," ("true" | "false")): 2 rules x 1999.
    flags = {"type": "array", "items": {"type": "boolean"}}
    catalogue = Catalogue.from_openai(_one_tool("flags", {"f": flags}))
    with pytest.raises(CatalogueError, match=r"tool 'flags'.*llama\.cpp would refuse"):
        catalogue_gbnf(catalogue, GrammarOptions(max_array_items=2000))
    check_grammar_loads(base_vocab, catalogue_gbnf(catalogue, GrammarOptions(max_array_items=1000)))


# -- item 10: the kind of a tools spec is chosen from its spelling, never by importing -----------

TOOLS_JSON = [{"type": "function", "function": {"name": "ping", "description": "Ping."}}]


def _forget_tools_package() -> None:
    for name in [n for n in sys.modules if n == "tools" or n.startswith("tools.")]:
        del sys.modules[name]


@pytest.fixture()
def tools_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory holding a package `tools` that leaves a mark when imported."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "__init__.py").write_text("open('imported', 'w').close()\nTOOLS = []\n")
    _forget_tools_package()
    yield tmp_path
    _forget_tools_package()


@pytest.mark.parametrize("name", ["tools.JSON", "tools.Json"])
def test_json_suffix_in_any_case_is_read_as_json(tools_dir, name):
    (tools_dir / name).write_text(json.dumps(TOOLS_JSON))
    assert load_catalogue(name).names == ["ping"]
    assert not (tools_dir / "imported").exists()


@pytest.mark.parametrize("name", ["tools.yaml", "tools.txt", "tools.jsonl"])
def test_other_existing_files_are_refused_without_importing(tools_dir, name):
    (tools_dir / name).write_text(json.dumps(TOOLS_JSON))
    with pytest.raises(CatalogueError, match="unknown tools file type"):
        load_catalogue(name)
    assert not (tools_dir / "imported").exists()


@pytest.mark.parametrize("spec", ["./tools.txt", "sub/tools", "missing.JSON", "tools more", "tools:"])
def test_paths_that_name_no_tools_file_are_refused(tools_dir, spec):
    with pytest.raises(CatalogueError, match=r"no such tools file|not a tools spec"):
        load_catalogue(spec)
    assert not (tools_dir / "imported").exists()


def test_path_objects_are_always_files(tools_dir):
    (tools_dir / "tools.cfg").write_text(json.dumps(TOOLS_JSON))
    with pytest.raises(CatalogueError, match=r"unknown tools file type '\.cfg'"):
        load_catalogue(tools_dir / "tools.cfg")
    with pytest.raises(CatalogueError, match="no such tools file"):
        load_catalogue(Path("tools"))
    assert not (tools_dir / "imported").exists()


def test_a_dotted_module_name_is_still_imported(tools_dir):
    (tools_dir / "tools" / "more.py").write_text(
        "from pydantic import BaseModel\nclass Ping(BaseModel):\n    '''Ping.'''\nALL = [Ping]\n"
    )
    assert load_catalogue("tools.more:ALL").names == ["ping"]
    assert (tools_dir / "imported").exists()  # the package's code ran: that is what a module spec means
