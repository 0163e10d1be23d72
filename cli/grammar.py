"""`toolroute grammar | prompt | schema TOOLS`: what a catalogue turns into."""

from __future__ import annotations

import argparse
import json
import sys

from toolroute.grammars import (
    GrammarOptions,
    PromptMode,
    catalogue_gbnf,
    load_catalogue,
    output_json_schema,
    render_system_prompt,
)
from toolroute.runtime.files import atomic_write_text

TOOLS_HELP = (
    "tools: a .json file (OpenAI tools / functions), or Python, which runs when loaded: "
    "a .py file or package.module[:ATTR]"
)


def _emit(text: str, output: str | None) -> None:
    if output:
        atomic_write_text(output, text)
    else:
        sys.stdout.write(text)


def _grammar_options(args: argparse.Namespace) -> GrammarOptions:
    return GrammarOptions(
        max_string_length=args.max_string_length,
        max_reason_length=args.max_reason_length,
        max_array_items=args.max_array_items,
    )


def _grammar(args: argparse.Namespace) -> int:
    catalogue = load_catalogue(args.tools)
    gbnf = catalogue_gbnf(catalogue, _grammar_options(args))
    if args.check:
        from llama_cpp import Llama

        from toolroute.runtime.base_models import packaged_gguf
        from toolroute.runtime.grammar_engine import check_grammar_loads

        vocab = Llama(str(packaged_gguf()), vocab_only=True, verbose=False)
        try:
            check_grammar_loads(vocab, gbnf)
        finally:
            vocab.close()
        print(f"grammar loads in llama.cpp ({gbnf.count('::=')} rules)", file=sys.stderr)
    _emit(gbnf, args.output)
    return 0


def _prompt(args: argparse.Namespace) -> int:
    _emit(render_system_prompt(load_catalogue(args.tools), args.mode) + "\n", args.output)
    return 0


def _schema(args: argparse.Namespace) -> int:
    schema = output_json_schema(load_catalogue(args.tools), _grammar_options(args))
    _emit(json.dumps(schema, indent=2, ensure_ascii=False) + "\n", args.output)
    return 0


def _add_caps(parser: argparse.ArgumentParser) -> None:
    defaults = GrammarOptions()
    parser.add_argument("--max-string-length", type=int, default=defaults.max_string_length)
    parser.add_argument("--max-reason-length", type=int, default=defaults.max_reason_length)
    parser.add_argument("--max-array-items", type=int, default=defaults.max_array_items)


def register(commands: argparse._SubParsersAction) -> None:
    grammar = commands.add_parser("grammar", help="print the GBNF grammar of a tool catalogue")
    grammar.add_argument("tools", help=TOOLS_HELP)
    _add_caps(grammar)
    grammar.add_argument(
        "--check", action="store_true", help="also load it in llama.cpp (default base vocab)"
    )
    grammar.add_argument("-o", "--output", help="write to this file (atomically) instead of stdout")
    grammar.set_defaults(handler=_grammar)

    prompt = commands.add_parser("prompt", help="print the router's system prompt for a tool catalogue")
    prompt.add_argument("tools", help=TOOLS_HELP)
    prompt.add_argument("--mode", choices=[m.value for m in PromptMode], default=PromptMode.full.value)
    prompt.add_argument("-o", "--output", help="write to this file (atomically) instead of stdout")
    prompt.set_defaults(handler=_prompt)

    schema = commands.add_parser("schema", help="print the JSON Schema union of all valid router outputs")
    schema.add_argument("tools", help=TOOLS_HELP)
    _add_caps(schema)
    schema.add_argument("-o", "--output", help="write to this file (atomically) instead of stdout")
    schema.set_defaults(handler=_schema)
