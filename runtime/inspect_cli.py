"""`toolroute inspect FILE.gguf`: what a router file carries (no torch, no gguf package)."""

from __future__ import annotations

import argparse
import json

from .router_file import RouterMetadata


def read_metadata(path: str) -> tuple[RouterMetadata, dict[str, str]]:
    from llama_cpp import Llama

    llama = Llama(path, vocab_only=True, verbose=False)
    try:
        kv = dict(llama.metadata)
    finally:
        llama.close()
    return RouterMetadata.from_kv(kv, where=path), kv


def _inspect(args: argparse.Namespace) -> int:
    metadata, kv = read_metadata(args.file)
    if args.grammar:
        print(metadata.grammar, end="")
        return 0
    catalogue = metadata.load_catalogue()
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
        "grammar_options": json.loads(metadata.grammar_options),
        "completion_suffix": metadata.completion_suffix,
        "base": json.loads(metadata.base),
        "manifest_sha256": metadata.manifest_sha256,
        "min_confidence": metadata.threshold,
    }
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("inspect", help="print the router metadata embedded in a GGUF")
    parser.add_argument("file", help="a router GGUF exported by toolroute")
    parser.add_argument("--grammar", action="store_true", help="print the embedded GBNF grammar instead")
    parser.set_defaults(handler=_inspect)
