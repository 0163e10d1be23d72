"""Router files are input from anyone: a crafted one is refused with a clear error, never a crash.

Regressions of issue 11 item 8: llama.cpp's grammar parser crashed the process (SIGSEGV) on a
grammar of 20,000 nested parentheses, an edited grammar was used as is (the router now decodes
with the grammar its catalogue makes), a chat template could
allocate without bound (`{{'x'*10**7}}`), and no metadata field had a size cap. Anything that
could crash runs in a subprocess, so that this test process outlives a regression.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import runtime_support
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from toolroute.cli import main
from toolroute.runtime.chat_template import FALLBACK_TEMPLATES, ChatTemplate, ChatTemplateError
from toolroute.runtime.results import RouteInputError
from toolroute.runtime.router import Router
from toolroute.runtime.router_file import (
    FORMAT_VERSION,
    MAX_CATALOGUE,
    MAX_CHAT_TEMPLATE,
    MAX_GRAMMAR,
    MAX_SYSTEM_PROMPT,
    RouterFileError,
    RouterMetadata,
    metadata_digest,
    read_router_file,
    validate_router_kv,
)
from toolroute.runtime.template_sandbox import BoundedChatFormatter

FIXTURES = Path(__file__).parent / "fixtures"
NESTED_GRAMMAR = "root ::= " + "(" * 20_000 + '"a"' + ")" * 20_000 + "\n"


class _RawMetadata:
    """Any key-values, written as `build_tiny_base` writes a router's (no validation on the way)."""

    def __init__(self, kv: dict[str, str], tokenizer_template: str) -> None:
        self.kv = kv
        self.chat_template = tokenizer_template  # what `tokenizer.chat_template` gets

    def to_kv(self) -> dict[str, str]:
        return self.kv


def _crafted(tmp_path_factory: Any, name: str, tokenizer_template: str | None = None, **fields: Any) -> Path:
    """The tiny random router with some `toolroute.*` fields replaced, unchecked."""
    metadata = runtime_support.router_metadata().model_copy(update=fields)
    kv = RouterMetadata.model_construct(**metadata.__dict__).to_kv()
    raw = _RawMetadata(kv, metadata.chat_template if tokenizer_template is None else tokenizer_template)
    path = tmp_path_factory.mktemp("crafted") / name
    return runtime_support.build_tiny_base(path, raw)  # type: ignore[arg-type]


def _in_subprocess(code: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120, check=False
    )


LOAD = """
import sys
from toolroute.runtime.router import Router
with Router.load(sys.argv[1], n_threads=1) as router:
    print("routed:", router.route("where is ORD-1?").kind)
"""

# The naive benchmark runner handed the file's grammar to llama.cpp before anything checked it.
MEASURE_NAIVE = """
import sys
from pathlib import Path
from toolroute.bench.measure import _naive_predictions
_naive_predictions(Path(sys.argv[1]), [], 1)
print("routed: none")
"""


@pytest.mark.parametrize("runner", [LOAD, MEASURE_NAIVE], ids=["Router.load", "measure-naive"])
def test_a_grammar_of_20000_nested_parentheses_never_reaches_llama_cpp(tmp_path_factory, runner):
    path = _crafted(tmp_path_factory, "nested.gguf", grammar=NESTED_GRAMMAR)
    done = _in_subprocess(runner, path)
    assert done.returncode == 0, (
        f"exit {done.returncode} (a negative code is a signal): {done.stderr[-2000:]}"
    )
    # The router decodes with the grammar the embedded catalogue makes, never the file's text.
    assert "routed:" in done.stdout, done.stderr[-2000:]


def test_an_edited_grammar_is_replaced_by_the_catalogues_and_reported(tmp_path_factory, capsys):
    original = runtime_support.router_metadata().grammar
    assert "{0,6}" in original  # the test options' string cap
    path = _crafted(tmp_path_factory, "edited.gguf", grammar=original.replace("{0,6}", "{0,60}", 1))
    router_file = read_router_file(path)
    assert router_file.metadata.grammar == original and not router_file.embedded_grammar_matches
    with Router.load(path, n_threads=1) as router:
        assert router.metadata.grammar == original
    assert main(["inspect", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["embedded_grammar_matches"] is False
    assert read_router_file(runtime_support.tiny_router_file(tmp_path_factory)).embedded_grammar_matches


def test_a_file_of_format_version_1_still_loads():
    """Metadata written by format 1 (committed): every later toolroute must read it."""
    kv = json.loads((FIXTURES / "router_metadata_v1.json").read_text(encoding="utf-8"))
    router_file = validate_router_kv(kv, "router_metadata_v1.json")
    assert router_file.metadata.format_version == 1
    assert router_file.catalogue.names == ["track_order", "request_refund", "escalate"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{'x'*10**7}}", r"constant `\*` expression \(line 1\)"),
        ("{{ 'x' | center(10**9) }}", r"constant \|center expression"),
        ("{{ " + "(" * 20_000 + "1" + ")" * 20_000 + " }}", "nests too deeply to compile"),
        ("{% for m in messages %}{{ m.content }}{{ 'ab' * 2 }}{% endfor %}{{ (", "does not compile"),
    ],
)
def test_a_template_llama_cpp_python_cannot_load_safely_is_refused_before_loading(
    tmp_path_factory, template, message
):
    """`Llama(...)` compiles `tokenizer.chat_template` while opening the file, and Jinja evaluates
    constant expressions while compiling, outside the sandbox: these are refused from the header."""
    path = _crafted(tmp_path_factory, "folded.gguf", chat_template=template)
    with pytest.raises(RouterFileError, match=message):
        read_router_file(path)
    with pytest.raises(RouterFileError, match=message):
        Router.load(path, n_threads=1)


def test_a_template_that_explodes_on_the_routers_prompt_is_refused_at_load(tmp_path_factory):
    template = "{{ 'x' * (messages | length * 10**7) }}"
    path = _crafted(tmp_path_factory, "explodes.gguf", chat_template=template)
    started = time.perf_counter()
    with pytest.raises(RouterFileError, match=r"fails on the router's own prompt.*limit is 4,194,304"):
        Router.load(path, n_threads=1)
    assert time.perf_counter() - started < 10


def test_a_template_that_explodes_on_a_long_request_is_a_route_input_error(tmp_path_factory):
    template = (
        runtime_support.router_metadata().chat_template
        + "{% if messages[-1]['content'] | length > 40 %}"
        + "{{ 'x' * (messages[-1]['content'] | length * 10**6) }}{% endif %}"
    )
    path = _crafted(tmp_path_factory, "long-requests.gguf", chat_template=template)
    with Router.load(path, n_threads=1) as router:
        assert router.route("where is ORD-1").kind in {"call", "no_tool", "invalid", "low_confidence"}
        with pytest.raises(RouteInputError, match="the chat template would build a value with `\\*`"):
            router.route("where is my order ORD-1234, I have waited for weeks now?")


def test_tokenizer_template_must_be_the_routers_template(tmp_path_factory):
    path = _crafted(tmp_path_factory, "two-templates.gguf", tokenizer_template="{{ messages }}")
    with pytest.raises(
        RouterFileError, match=r"tokenizer\.chat_template differs from toolroute\.chat_template"
    ):
        read_router_file(path)


def test_a_base_gguf_whose_template_folds_unbounded_is_refused_before_llama_cpp_python_opens_it(
    tmp_path_factory,
):
    """Training reads the base's template through `Llama(vocab_only=True)`, which compiles it."""
    path = _crafted(tmp_path_factory, "base.gguf", tokenizer_template="{{ 'x' * 10**7 }}")
    with pytest.raises(ChatTemplateError, match=r"tokenizer\.chat_template: .*constant `\*` expression"):
        ChatTemplate.from_gguf(path)


def test_oversized_metadata_is_refused_naming_each_field(tmp_path_factory):
    fields = {
        "catalogue": "x" * (MAX_CATALOGUE + 1),
        "system_prompt": "x" * (MAX_SYSTEM_PROMPT + 1),
        "grammar": "x" * (MAX_GRAMMAR + 1),
        "chat_template": "x" * (MAX_CHAT_TEMPLATE + 1),
        "base": "x" * 5000,
    }
    path = _crafted(tmp_path_factory, "oversized.gguf", **fields)
    started = time.perf_counter()
    with pytest.raises(RouterFileError) as info:
        Router.load(path, n_threads=1)
    assert time.perf_counter() - started < 5
    for name, value in fields.items():
        limit = len(value) - 1 if name != "base" else 4096
        assert f"toolroute.{name}: String should have at most {limit} characters" in str(info.value)


def test_metadata_of_today_and_older_versions_loads_and_newer_is_refused(tmp_path_factory):
    today = read_router_file(runtime_support.tiny_router_file(tmp_path_factory))
    assert today.metadata.format_version == FORMAT_VERSION and today.catalogue.names[0] == "track_order"
    kv = {key: value for key, value in today.kv.items() if key != "toolroute.format_version"}
    assert RouterMetadata.from_kv(kv).format_version == 1  # written before the field existed: format 1
    newer = str(FORMAT_VERSION + 1)
    with pytest.raises(RouterFileError, match=f"router format {newer} is newer than this toolroute"):
        RouterMetadata.from_kv({**kv, "toolroute.format_version": newer, "toolroute.later_field": "x"})
    with pytest.raises(RouterFileError, match="is not a version number"):
        RouterMetadata.from_kv({**kv, "toolroute.format_version": "9" * 5000})


def test_format_4_files_carry_a_digest_of_every_field_and_older_ones_load_without(tmp_path_factory):
    today = read_router_file(runtime_support.tiny_router_file(tmp_path_factory))
    kv = dict(today.kv)
    assert kv["toolroute.metadata_sha256"] == metadata_digest(kv)
    undigested = {key: value for key, value in kv.items() if key != "toolroute.metadata_sha256"}
    with pytest.raises(RouterFileError, match=r"router format 4 lacks toolroute\.metadata_sha256"):
        validate_router_kv(undigested, "crafted")
    edited = {**kv, "toolroute.system_prompt": kv["toolroute.system_prompt"] + " "}
    with pytest.raises(RouterFileError, match=r"does not match toolroute\.metadata_sha256"):
        validate_router_kv(edited, "crafted")
    # A format-3 file (written before the digest existed) loads as it was written.
    older = validate_router_kv({**undigested, "toolroute.format_version": "3"}, "format-3")
    assert older.metadata.format_version == 3 and older.metadata.metadata_sha256 is None
    # Rewriting (as `toolroute eval --pick-threshold` does) recomputes the digest, never copies it.
    rewritten = today.metadata.model_copy(update={"min_confidence": "0.5"}).to_kv()
    digest = rewritten["toolroute.metadata_sha256"]
    assert digest == metadata_digest(rewritten) != kv["toolroute.metadata_sha256"]


def test_a_truncated_or_foreign_file_is_a_router_file_error(tmp_path_factory, tmp_path):
    whole = runtime_support.tiny_router_file(tmp_path_factory).read_bytes()
    for size in (0, 3, 30, 5000, 300_000):
        cut = tmp_path / f"cut-{size}.gguf"
        cut.write_bytes(whole[:size])
        with pytest.raises(RouterFileError, match=r"not a GGUF file|truncated GGUF header"):
            read_router_file(cut)
    foreign = tmp_path / "foreign.gguf"
    foreign.write_bytes(b"GGUF" + (99).to_bytes(4, "little") + bytes(16))
    with pytest.raises(RouterFileError, match="GGUF version 99 is not supported"):
        read_router_file(foreign)


# -- the bounded template sandbox ------------------------------------------------------------------

MESSAGES = [
    {"role": "system", "content": "the system prompt"},
    {"role": "user", "content": "hi\u2028 there"},
    {"role": "assistant", "content": "ok"},
    {"role": "user", "content": "again"},
]
REAL_TEMPLATES = {
    **FALLBACK_TEMPLATES,
    "llama3": "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    "features": "{% macro say(x) %}[{{ x|upper }}]{% endmacro %}{% set ns = namespace(n=0) %}"
    "{% for m in messages[::-1] if m.role != 'tool' %}{{ say(m.role) }}"
    "{{ m.content|indent(2) ~ '|' ~ loop.length }}{{ '%s-%d' % (m.role, loop.index) }}"
    "{{ '{}:{}'.format(m.role, 3) }}{{ [1, 2]|join(',') }}{{ '=' * 3 }}"
    "{{ m|tojson }}{% set ns.n = ns.n + 1 %}{% endfor %}{% set x %}abc{{ 1 + 2 }}{% endset %}{{ x ~ ns.n }}"
    "{{ range(3)|list }}{{ messages|map(attribute='role')|join(' ') }}{% raw %}{{raw}}{% endraw %}",
}


@pytest.mark.parametrize("name", sorted(REAL_TEMPLATES))
def test_templates_within_the_bounds_render_as_llama_cpp_python_renders_them(name):
    template = REAL_TEMPLATES[name]
    for generation_prompt in (True, False):
        expected = Jinja2ChatFormatter(template, "</s>", "<s>", add_generation_prompt=generation_prompt)
        bounded = BoundedChatFormatter(template, "</s>", "<s>", add_generation_prompt=generation_prompt)
        assert bounded(messages=MESSAGES).prompt == expected(messages=MESSAGES).prompt


def test_the_default_bases_template_renders_as_before(base_vocab):
    template = ChatTemplate.from_gguf(base_vocab.model_path)
    expected = Jinja2ChatFormatter(template.template, template.eos_token, template.bos_token)
    assert template.render_prompt(MESSAGES) == expected(messages=MESSAGES).prompt


HOSTILE = {
    "repeat": "{{ 'x' * (messages | length * 10**7) }}",
    "doubling +": "{% set n = namespace(s='x') %}{% for i in range(99) %}{% set n.s = n.s+n.s %}{% endfor %}",
    "doubling ~": "{% set n = namespace(s='x') %}{% for i in range(99) %}{% set n.s = n.s~n.s %}{% endfor %}",
    "list repeat": "{{ ([messages] * 10**8) | length }}",
    "center": "{{ 'x'.center(messages | length * 10**8) }}",
    "format width": "{{ ('{:>' ~ (messages | length) ~ '00000000}').format(1) }}",
    "percent width": "{% set f = '%0' ~ (messages | length) ~ '00000000d' %}{{ f % 1 }}",
    "replace": "{% set s = 'x' * 4000 %}{{ s.replace('', s) }}",
    "replace filter": "{% set s = 'x' * 4000 %}{{ s | replace('', s) }}",
    "join": "{% set a = ['x' * 100000] * 40 %}{{ a | join(a[0]) }}",
    "expandtabs": "{% set s = '\t' * 100000 %}{{ s.expandtabs(1000) }}",
    "indent": "{% set s = '\n' * 1000000 %}{{ s | indent(1000) }}",
    "wordwrap": "{% set s = 'x ' * 1000000 %}{{ s | wordwrap(1, wrapstring='y' * 100) }}",
    "shared lists": "{% set a = ['x' * 1000] %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
    "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{% set d = [c, c, c, c, c, c, c, c, c, c] %}"
    "{% set e = [d, d, d, d, d, d, d, d, d, d] %}{{ e | tojson }}",
    "integers": "{% set n = namespace(x=3) %}{% for i in range(20) %}{% set n.x = n.x * n.x %}{% endfor %}",
    "output": "{% for i in range(100000) %}{% for j in range(100000) %}xxxxxxxxxxxx{% endfor %}{% endfor %}",
    "work": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "recursion": "{% macro f(n) %}{{ f(n) }}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "lipsum": "{{ lipsum(100000, max=100000) }}",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_template_fails_fast_with_a_clear_error(name):
    template = ChatTemplate(template=HOSTILE[name], bos_token="<s>", eos_token="</s>")
    started = time.perf_counter()
    with pytest.raises(ChatTemplateError, match="the chat template"):
        template.render_prompt(MESSAGES)
    assert time.perf_counter() - started < 5  # bounded: each took minutes and gigabytes, or forever
