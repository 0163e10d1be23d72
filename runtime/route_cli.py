"""`toolroute route MODEL.gguf TEXT|-` and `toolroute serve MODEL.gguf`: the runtime's commands."""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from typing import Any

from .results import RouteInputError, RouteResult


def _load(args: argparse.Namespace) -> Any:
    from .router import Router

    return Router.load(
        args.model,
        tools=args.tools,
        min_confidence=args.min_confidence,
        n_threads=args.threads,
        n_ctx=args.n_ctx,
        **({"n_contexts": args.contexts} if hasattr(args, "contexts") else {}),
    )


def _json(result: RouteResult) -> str:
    return json.dumps(result.model_dump(mode="json"), ensure_ascii=False)


def _route(args: argparse.Namespace) -> int:
    with _load(args) as router:
        if args.request != "-":
            print(_json(router.route(args.request)))
            return 0
        failures = 0
        # One output line per input line, errors included, so outputs stay aligned with inputs.
        for number, line in enumerate(sys.stdin, start=1):
            text = line.rstrip("\n")
            try:
                print(_json(router.route(text)), flush=True)
            except RouteInputError as exc:
                failures += 1
                print(json.dumps({"error": str(exc), "line": number}, ensure_ascii=False), flush=True)
        return 1 if failures else 0


def _serve(args: argparse.Namespace) -> int:
    from .server import make_server

    if not _is_loopback(args.host):
        print(
            f"toolroute serve: warning: listening on {args.host}, reachable from other machines; "
            "the server has no authentication",
            file=sys.stderr,
        )
    with _load(args) as router:
        server = make_server(
            router, args.host, args.port, max_body_bytes=args.max_body_bytes, quiet=args.quiet
        )
        host, port = server.server_address[:2]
        print(f"toolroute serve: {args.model} on http://{host}:{port}/v1 (Ctrl-C to stop)", file=sys.stderr)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _add_router_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a router GGUF exported by toolroute")
    parser.add_argument("--tools", help="check the router against these tools (.py / .json / module[:ATTR])")
    parser.add_argument(
        "--min-confidence", type=float, help="hold back calls below this probability (default: the file's)"
    )
    parser.add_argument("--threads", type=int, help="CPU threads per context (default: half the cores)")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context size in tokens (default 4096)")


def register(commands: argparse._SubParsersAction) -> None:
    from .server import DEFAULT_MAX_BODY_BYTES

    route = commands.add_parser("route", help="route a request with a router GGUF and print the JSON result")
    _add_router_options(route)
    route.add_argument(
        "request", help="the request text, or - to read one request per line from stdin (JSONL out)"
    )
    route.set_defaults(handler=_route)

    serve = commands.add_parser("serve", help="serve a router GGUF over an OpenAI-compatible HTTP API")
    _add_router_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--contexts", type=int, default=1, help="requests routed at the same time (default 1)")
    serve.add_argument(
        "--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="larger bodies get 413"
    )
    serve.add_argument("--quiet", action="store_true", help="no access log")
    serve.set_defaults(handler=_serve)
