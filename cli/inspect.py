"""`toolroute inspect FILE.gguf`: what a router file carries (no torch, no gguf package)."""

from __future__ import annotations

import argparse
import json


def _inspect(args: argparse.Namespace) -> int:
    # Imported when it runs: the router-file reader brings llama-cpp-python's chat formats (the
    # template sandbox), which building the parser for another command should not load.
    from toolroute.runtime.router_file import read_router_file

    router_file = read_router_file(args.file)
    metadata, kv, catalogue = router_file.metadata, router_file.kv, router_file.catalogue
    if args.grammar:
        print(metadata.grammar, end="")
        return 0
    summary = {
        "file": args.file,
        "format_version": metadata.format_version,
        "architecture": kv.get("general.architecture"),
        "file_type": kv.get("general.file_type"),
        "tools": catalogue.names,
        "catalogue_sha256": metadata.catalogue_sha256,
        "prompt_mode": metadata.prompt_mode,
        "system_prompt": metadata.system_prompt,
        "grammar_rules": metadata.grammar.count("::="),
        # False: the file's embedded GBNF (what stock llama.cpp users get) is not the grammar the
        # catalogue makes today; toolroute decodes with the regenerated one.
        "embedded_grammar_matches": router_file.embedded_grammar_matches,
        "grammar_options": json.loads(metadata.grammar_options),
        "completion_suffix": metadata.completion_suffix,
        "base": json.loads(metadata.base),
        "manifest_sha256": metadata.manifest_sha256,
        "min_confidence": metadata.threshold,
        # Held to spans of the request at run time (not by stock llama.cpp, which has the GBNF only).
        "copied_arguments": {entry.key: entry.describe() for entry in metadata.copied(catalogue)},
        # Answer-step rows trained (0: `respond` and the server refuse to answer a tool's output).
        "answers": {"trained": metadata.trained_answers > 0, "rows": metadata.trained_answers},
        "call_threshold": None if metadata.call_rule is None else metadata.call_rule.model_dump(),
        "no_tool_threshold": None if metadata.no_tool_rule is None else metadata.no_tool_rule.model_dump(),
    }
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("inspect", help="print the router metadata embedded in a GGUF")
    parser.add_argument("file", help="a router GGUF exported by toolroute")
    parser.add_argument(
        "--grammar", action="store_true", help="print the GBNF grammar the router decodes with instead"
    )
    parser.set_defaults(handler=_inspect)
