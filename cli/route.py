"""`toolroute route MODEL.gguf TEXT|-` and `toolroute serve MODEL.gguf`: the runtime's commands."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from toolroute.cli import add_copy_rule_flags
from toolroute.runtime.results import RouteInputError, RouteResult

API_KEY_ENV = "TOOLROUTE_API_KEY"


def _load(args: argparse.Namespace) -> Any:
    from toolroute.runtime.router import Router

    return Router.load(
        args.model,
        tools=args.tools,
        min_confidence=args.min_confidence,
        n_threads=args.threads,
        n_ctx=args.n_ctx,
        copy_rule=not args.no_copy_rule,
        **({"n_contexts": args.contexts} if hasattr(args, "contexts") else {}),
        **({} if args.min_span_mass is None else {"min_span_mass": args.min_span_mass}),
        **(
            {}
            if args.min_required_span_mass is None
            else {"min_required_span_mass": args.min_required_span_mass}
        ),
        **({} if args.min_key_probability is None else {"min_key_probability": args.min_key_probability}),
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
    # Before the model loads: without the serve extra this raises ModuleNotFoundError, which the
    # CLI turns into one line naming `pip install 'toolroute[serve]'`.
    from toolroute.runtime.server import make_server
    from toolroute.runtime.server_settings import ServerSettings, is_loopback

    settings = ServerSettings(
        max_body_bytes=args.max_body_bytes,
        read_timeout_s=args.read_timeout,
        keep_alive_timeout_s=args.keep_alive_timeout,
        max_connections=args.max_connections,
        max_queue=args.max_queue,
        queue_timeout_s=args.queue_timeout,
        shutdown_timeout_s=args.shutdown_timeout,
        allowed_hosts=tuple(args.allow_host or ()),
        allowed_origins=tuple(args.allow_origin or ()),
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
    )
    if not is_loopback(args.host):
        print(
            f"toolroute serve: warning: listening on {args.host}, reachable from other machines"
            + ("" if settings.api_key else f"; no API key is set (--api-key or ${API_KEY_ENV})")
            + (
                ""
                if settings.allowed_hosts
                else "; clients must send a Host this server accepts (--allow-host)"
            ),
            file=sys.stderr,
        )
    with _load(args) as router:
        server = make_server(router, args.host, args.port, settings=settings, quiet=args.quiet)
        print(
            f"toolroute serve: {args.model} on {server.url}/v1 (Ctrl-C or SIGTERM to stop)",
            file=sys.stderr,
            flush=True,
        )
        try:
            # Returns after SIGTERM/Ctrl-C once in-flight requests are done (or the drain timed out).
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
        print("toolroute serve: stopped", file=sys.stderr, flush=True)
    return 0


def _add_router_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a router GGUF exported by toolroute")
    parser.add_argument("--tools", help="check the router against these tools (.py / .json / module[:ATTR])")
    parser.add_argument(
        "--min-confidence", type=float, help="hold back calls below this probability (default: the file's)"
    )
    parser.add_argument("--threads", type=int, help="CPU threads per context (default: the physical cores)")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context size in tokens (default 4096)")
    add_copy_rule_flags(parser)


def register(commands: argparse._SubParsersAction) -> None:
    from toolroute.runtime.server_settings import ServerSettings

    route = commands.add_parser("route", help="route a request with a router GGUF and print the JSON result")
    _add_router_options(route)
    route.add_argument(
        "request", help="the request text, or - to read one request per line from stdin (JSONL out)"
    )
    route.set_defaults(handler=_route)

    serve = commands.add_parser(
        "serve",
        help="serve a router GGUF over an OpenAI-compatible HTTP API (needs: pip install 'toolroute[serve]')",
    )
    _add_router_options(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--contexts", type=int, default=1, help="requests routed at the same time (default 1)")
    limits = ServerSettings()
    serve.add_argument(
        "--max-body-bytes", type=int, default=limits.max_body_bytes, help="larger bodies get 413"
    )
    serve.add_argument(
        "--read-timeout",
        type=float,
        default=limits.read_timeout_s,
        help=f"seconds for a request's head, then its body, to arrive (default {limits.read_timeout_s:g})",
    )
    serve.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=limits.keep_alive_timeout_s,
        help=f"seconds an idle connection stays open (default {limits.keep_alive_timeout_s:g})",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=limits.max_connections,
        help=f"open connections served; requests beyond get 503 (default {limits.max_connections})",
    )
    serve.add_argument(
        "--max-queue",
        type=int,
        default=limits.max_queue,
        help=f"requests waiting for a busy context before 503 + Retry-After (default {limits.max_queue})",
    )
    serve.add_argument(
        "--queue-timeout",
        type=float,
        default=limits.queue_timeout_s,
        help=f"seconds a request waits for a context before 503 (default {limits.queue_timeout_s:g})",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        default=limits.shutdown_timeout_s,
        help="seconds in-flight requests get to finish after SIGTERM/Ctrl-C; then they are cut "
        f"(default {limits.shutdown_timeout_s:g})",
    )
    serve.add_argument(
        "--allow-host",
        action="append",
        metavar="NAME[:PORT]",
        help="a Host header to accept besides localhost/127.0.0.1/[::1] (repeatable; '*' accepts any)",
    )
    serve.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="a browser Origin to accept, with CORS (repeatable; '*' any); others get 403",
    )
    serve.add_argument(
        "--api-key",
        help=f"require `Authorization: Bearer KEY` (default: ${API_KEY_ENV}, if set; /healthz stays open)",
    )
    serve.add_argument("--quiet", action="store_true", help="no access log")
    serve.set_defaults(handler=_serve)
