"""Load and soak `toolroute serve` over loopback: concurrency levels, then a long run watching memory.

    python -m toolroute.bench.load [--router ROUTER.gguf] [--levels 1,4,16,64] [--requests 200]
                                   [--soak 10000] [--soak-clients 4] [--contexts 1] [--max-queue 16]
                                   [--threads T] [--max-seconds 600] [--json OUT.json]

A real `toolroute serve` process (loopback only, port picked by the OS) serves the router; the
clients are threads here, each with one kept-alive HTTP connection, posting the user messages of
the customer-support eval set in turn. Everything is bounded: each level stops after `--requests`
requests or `--max-seconds`, the soak after `--soak` requests or `--max-seconds`.

Per level: answers by status, errors (anything but 200 and the documented 503 with Retry-After,
whose count is reported on its own: a full queue answers at once rather than waiting), throughput
of 200s, and p50/p99 latency of 200s, measured at the client. The soak samples the server's
resident memory (`/proc/PID/status` VmRSS) as it goes: its value after warm-up (the first tenth of
the requests), at the end, its largest, and the growth from warm-up to the end, so a leak shows as
a slope, not a peak. Without `--router`, the untuned customer-support router is built from the
default base (`router_files.untuned_router`; its outputs fill free strings up to the caps).
Prints Markdown tables (and writes JSON with `--json`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolroute.bench.metrics import percentile
from toolroute.grammars import load_catalogue
from toolroute.train.formats import read_valid_examples

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "examples" / "customer_support" / "eval.jsonl"
TOOLS = ROOT / "examples" / "customer_support" / "tools.py"
STARTUP_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 120.0


def eval_requests(path: Path = EVAL, tools: Path = TOOLS) -> list[str]:
    """The requests (the routed user turns) of a data file in any format training reads, checked
    as training checks them: a row that does not read raises InvalidDataError naming file and line."""
    return [example.request for example in read_valid_examples(path, load_catalogue(tools)).examples]


# -- the server process ----------------------------------------------------------------------------


class ServerProcess:
    """`toolroute serve` in a child process, on 127.0.0.1 and a free port."""

    def __init__(self, router: Path, options: list[str]) -> None:
        command = [
            sys.executable,
            "-m",
            "toolroute",
            "serve",
            str(router),
            "--port",
            "0",
            "--quiet",
            *options,
        ]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.port = self._wait_for_port()
        self._stderr = threading.Thread(target=self._drain, daemon=True)  # never let its pipe fill
        self._stderr.start()

    def _wait_for_port(self) -> int:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        assert self.process.stderr is not None
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line:
                raise RuntimeError(f"toolroute serve exited ({self.process.wait()}) before serving")
            if match := re.search(r"on http://127\.0\.0\.1:(\d+)/v1", line):
                return int(match.group(1))
        raise RuntimeError("toolroute serve did not start in time")

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if "Traceback" in line or "internal error" in line:
                print(f"server: {line.rstrip()}", file=sys.stderr)

    def memory_kb(self) -> dict[str, int]:
        """The server's VmRSS, VmHWM (peak RSS) and RssAnon, in kB. RssAnon is its own heap: the
        weights are a mapped file, whose pages the kernel may drop and read back under pressure,
        so a leak shows in RssAnon even when VmRSS moves with the page cache."""
        values = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:")):
                key, amount, _ = line.split()
                values[key.rstrip(":")] = int(amount)
        return values

    def stop(self) -> int:
        self.process.terminate()  # SIGTERM: the server drains and exits 0
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


# -- clients -----------------------------------------------------------------------------------------


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)  # of 200s
    statuses: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, status: str, latency_ms: float) -> None:
        with self.lock:
            self.statuses[status] += 1
            if status == "200":
                self.latencies_ms.append(latency_ms)


def _client(port: int, texts: list[str], tickets: Any, tally: Tally, deadline: float) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S)
    try:
        for ticket in tickets:
            if ticket is None or time.monotonic() > deadline:
                return
            body = json.dumps({"messages": [{"role": "user", "content": texts[ticket % len(texts)]}]})
            started = time.perf_counter()
            try:
                connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                payload = response.read()
                status = str(response.status)
                if status == "503" and response.getheader("Retry-After") is None:
                    status = "503 without Retry-After"
                elif status == "200" and not json.loads(payload).get("choices"):
                    status = "200 without choices"
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException) as exc:
                status = f"error: {type(exc).__name__}"
                connection.close()
            tally.add(status, (time.perf_counter() - started) * 1000.0)
    finally:
        connection.close()


class Tickets:
    """Request numbers 0..limit-1, handed out once each across threads."""

    def __init__(self, limit: int) -> None:
        self._numbers = iter(range(limit))
        self._lock = threading.Lock()

    def __iter__(self) -> Tickets:
        return self

    def __next__(self) -> int | None:
        with self._lock:
            return next(self._numbers, None)


def run_clients(
    port: int, texts: list[str], clients: int, requests: int, max_seconds: float
) -> dict[str, Any]:
    tally = Tally()
    tickets = Tickets(requests)
    deadline = time.monotonic() + max_seconds
    started = time.perf_counter()
    threads = [
        threading.Thread(target=_client, args=(port, texts, tickets, tally, deadline), daemon=True)
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max_seconds + REQUEST_TIMEOUT_S)
    wall = time.perf_counter() - started
    ok = len(tally.latencies_ms)
    errors = {s: n for s, n in tally.statuses.items() if s not in ("200", "503")}
    return {
        "clients": clients,
        "requests": sum(tally.statuses.values()),
        "ok": ok,
        "overloaded_503": tally.statuses.get("503", 0),
        "errors": errors,
        "wall_s": round(wall, 2),
        "throughput_rps": round(ok / wall, 2) if wall else None,
        "p50_ms": _round(percentile(tally.latencies_ms, 50)),
        "p99_ms": _round(percentile(tally.latencies_ms, 99)),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# -- soak ------------------------------------------------------------------------------------------


def soak(
    server: ServerProcess, texts: list[str], clients: int, requests: int, max_seconds: float
) -> dict[str, Any]:
    """`requests` requests from `clients` clients, the server's RSS sampled every half second."""
    samples: list[dict[str, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            samples.append(server.memory_kb())

    sampler = threading.Thread(target=sample, daemon=True)
    start = server.memory_kb()
    sampler.start()
    result = run_clients(server.port, texts, clients, requests, max_seconds)
    done.set()
    sampler.join()
    end = server.memory_kb()
    # Warm-up: the first tenth of the run (caches, allocator pools, the first matchers).
    warm = samples[max(0, len(samples) // 10 - 1)] if samples else start
    every = max(1, len(samples) // 20)
    mb = lambda kb: round(kb / 1024, 1)  # noqa: E731
    result.update(
        rss_start_mb=mb(start["VmRSS"]),
        rss_after_warmup_mb=mb(warm["VmRSS"]),
        rss_end_mb=mb(end["VmRSS"]),
        rss_peak_mb=mb(end["VmHWM"]),
        anon_after_warmup_mb=mb(warm["RssAnon"]),
        anon_end_mb=mb(end["RssAnon"]),
        anon_peak_mb=mb(max(s["RssAnon"] for s in [warm, *samples, end])),
        anon_growth_after_warmup_mb=mb(end["RssAnon"] - warm["RssAnon"]),
        rss_series_mb=[mb(s["VmRSS"]) for s in samples[::every]],
        anon_series_mb=[mb(s["RssAnon"]) for s in samples[::every]],
    )
    return result


# -- report ----------------------------------------------------------------------------------------


def levels_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| clients | requests | 200 | 503 (queue full or wait too long) | other errors | req/s (200s) "
        "| p50 ms | p99 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        errors = sum(row["errors"].values())
        lines.append(
            f"| {row['clients']} | {row['requests']} | {row['ok']} | {row['overloaded_503']} | {errors} "
            f"| {row['throughput_rps']} | {row['p50_ms']} | {row['p99_ms']} |"
        )
    return "\n".join(lines)


def soak_table(row: dict[str, Any]) -> str:
    return "\n".join(
        [
            "| requests | clients | 200 | 503 | other errors | req/s | RSS after warm-up / end / peak "
            "| heap (RssAnon) after warm-up / end / peak | heap growth after warm-up |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {row['requests']} | {row['clients']} | {row['ok']} | {row['overloaded_503']} "
            f"| {sum(row['errors'].values())} "
            f"| {row['throughput_rps']} | {row['rss_after_warmup_mb']} / {row['rss_end_mb']} / "
            f"{row['rss_peak_mb']} MB | {row['anon_after_warmup_mb']} / {row['anon_end_mb']} / "
            f"{row['anon_peak_mb']} MB | {row['anon_growth_after_warmup_mb']:+} MB |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--router", type=Path, help="a router GGUF (default: build the untuned customer-support one)"
    )
    parser.add_argument(
        "--levels", default="1,4,16,64", help="concurrent clients per level (comma-separated)"
    )
    parser.add_argument("--requests", type=int, default=200, help="requests per level (default 200)")
    parser.add_argument("--soak", type=int, default=0, help="requests in the soak (0: none)")
    parser.add_argument("--soak-clients", type=int, default=4)
    parser.add_argument("--contexts", type=int, default=1, help="`toolroute serve --contexts`")
    parser.add_argument("--max-queue", type=int, help="`toolroute serve --max-queue` (default: its own)")
    parser.add_argument("--threads", type=int, help="`toolroute serve --threads`")
    parser.add_argument("--max-seconds", type=float, default=600.0, help="bound on each level and the soak")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)

    options = ["--contexts", str(args.contexts), "--max-connections", str(max(64, *_levels(args.levels)))]
    if args.max_queue is not None:
        options += ["--max-queue", str(args.max_queue)]
    if args.threads is not None:
        options += ["--threads", str(args.threads)]
    texts = eval_requests()
    with tempfile.TemporaryDirectory() as scratch:
        router = args.router
        if router is None:
            from toolroute.bench.router_files import untuned_router

            router = untuned_router(TOOLS, Path(scratch) / "customer-support.untuned.gguf", "compact")
        server = ServerProcess(router, options)
        try:
            run_clients(server.port, texts, 1, 5, args.max_seconds)  # warm the caches before timing
            levels = [
                run_clients(server.port, texts, clients, args.requests, args.max_seconds)
                for clients in _levels(args.levels)
            ]
            soaked = (
                soak(server, texts, args.soak_clients, args.soak, args.max_seconds) if args.soak else None
            )
        finally:
            exit_code = server.stop()
    print(f"router: {router}; serve options: {' '.join(options)}; SIGTERM exit code {exit_code}\n")
    print(levels_table(levels))
    if soaked:
        print("\n" + soak_table(soaked))
        print(f"\nserver RSS through the soak (MB, evenly spaced samples): {soaked['rss_series_mb']}")
        print(f"server heap (RssAnon) through the soak (MB): {soaked['anon_series_mb']}")
    if args.json:
        args.json.write_text(json.dumps({"levels": levels, "soak": soaked, "exit_code": exit_code}, indent=2))
    return 0


def _levels(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    raise SystemExit(main())
