"""The runtime install on its own: `pip install '.[serve]'` in a second environment, no train extra.

`make test-runtime` builds that environment (`.venv-runtime`, reusing the llama-cpp-python wheel
`make setup` built) and runs this module with TOOLROUTE_RUNTIME_PYTHON pointing at its python.
The router file is built here, in the full environment (the `gguf` package writes it); every
command then runs in the runtime environment under an import guard that records any attempt to
import a training-side package, whether or not the attempt was caught.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from runtime_support import tiny_router_file

from support import CUSTOMER_SUPPORT_TOOLS, ROOT
from toolroute.grammars import GrammarOptions, load_catalogue, output_json_schema, render_system_prompt

pytestmark = pytest.mark.runtime_install

FORBIDDEN = ("torch", "transformers", "trl", "peft", "tqdm", "gguf", "outlines", "matplotlib", "datasets")

# Run the CLI with a meta-path finder that appends every forbidden import attempt to a file.
GUARD = """
import sys
FORBIDDEN = set({forbidden!r})
LOG = {log!r}
class Guard:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            with open(LOG, "a") as handle:
                handle.write(name + "\\n")
        return None
sys.meta_path.insert(0, Guard())
sys.argv = ["toolroute", *sys.argv[1:]]
from toolroute.cli import main
raise SystemExit(main())
"""


@pytest.fixture(scope="module")
def runtime_python() -> Path:
    value = os.environ.get("TOOLROUTE_RUNTIME_PYTHON")
    if not value:
        pytest.skip("run by `make test-runtime` in the runtime-only environment")
    return Path(value).absolute()  # not resolve(): a venv's python is a symlink to the base one


@pytest.fixture
def guarded(runtime_python, tmp_path):
    log = tmp_path / "imports.log"
    script = tmp_path / "guarded_toolroute.py"
    script.write_text(GUARD.format(forbidden=FORBIDDEN, log=str(log)), encoding="utf-8")

    def command(*args: str) -> list[str]:
        return [str(runtime_python), str(script), *args]

    yield command
    attempted = log.read_text(encoding="utf-8").split() if log.exists() else []
    assert not attempted, f"the runtime install tried to import: {sorted(set(attempted))}"


def test_the_runtime_environment_has_no_training_packages(runtime_python):
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    out = subprocess.run(
        [str(runtime_python), "-c", probe, *FORBIDDEN], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_help_route_and_inspect(guarded, tmp_path_factory):
    router = tiny_router_file(tmp_path_factory)
    help_text = subprocess.run(guarded("--help"), capture_output=True, text=True, timeout=60, check=True)
    assert "route" in help_text.stdout and "serve" in help_text.stdout
    routed = subprocess.run(
        guarded("route", str(router), "where is my order ORD-1234?"),
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(routed.stdout)
    assert result["kind"] in ("call", "no_tool", "low_confidence")
    inspected = subprocess.run(
        guarded("inspect", str(router)), capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(inspected.stdout)["tools"] == ["track_order", "request_refund", "escalate"]


def test_grammar_prompt_and_schema(guarded):
    """The catalogue commands the runtime install documents, each against what the full install
    makes of the same catalogue (the grammar: the committed golden file `make goldens` writes)."""
    tools = str(CUSTOMER_SUPPORT_TOOLS)
    catalogue = load_catalogue(tools)

    def run(*args: str) -> str:
        return subprocess.run(guarded(*args), capture_output=True, text=True, timeout=60, check=True).stdout

    golden = (ROOT / "grammars" / "golden" / "customer_support.gbnf").read_text(encoding="utf-8")
    assert run("grammar", tools) == golden
    assert run("prompt", tools, "--mode", "compact") == render_system_prompt(catalogue, "compact") + "\n"
    assert json.loads(run("schema", tools)) == output_json_schema(catalogue, GrammarOptions())


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--name", "x", "--data", "train.jsonl"],
        ["export", "runs/x"],
        ["bench", "runs/x", "--data", "d"],
    ],
)
def test_a_training_command_names_its_extra(runtime_python, tmp_path, command):
    done = subprocess.run(
        [str(runtime_python), "-m", "toolroute", *command],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "needs the 'train' extra" in done.stderr and "pip install 'toolroute[train]'" in done.stderr
    assert "Traceback" not in done.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_round_trip(guarded, tmp_path_factory):
    router = tiny_router_file(tmp_path_factory)
    port = _free_port()
    server = subprocess.Popen(
        guarded("serve", str(router), "--port", str(port), "--quiet"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    assert json.load(response)["status"] == "ok"
                break
            except OSError:
                assert server.poll() is None, server.communicate()[1]
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        body = json.dumps({"messages": [{"role": "user", "content": "where is ORD-1234?"}]}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            completion = json.load(response)
        assert completion["object"] == "chat.completion"
        assert completion["choices"][0]["finish_reason"] in ("tool_calls", "stop")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
