"""Faults: damaged router files, and processes killed (SIGKILL) while they write.

- A router GGUF cut short anywhere, or with one byte flipped in its metadata, is refused with an
  error naming the file (every load runs in a subprocess: a crash would fail the test, not end it).
- `kill -9` of an export at several points of writing leaves no file under the final name that is
  incomplete: a file `Router.load` accepts is byte for byte the finished one.
- `kill -9` of training while it writes a checkpoint leaves a run that `--resume` finishes.

The kills are real: the child process sends itself SIGKILL from inside the write it is in, so
each point is exact, not a race with a timer.
"""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import runtime_support

# GGUF value types: the fixed sizes of the scalars, 8 = string, 9 = array.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def string_fields(data: bytes) -> tuple[dict[str, tuple[int, int, int]], int]:
    """{key: (key offset, value offset, value length)} of the string key-values, and where the
    key-value section ends (a minimal walk of the GGUF layout, independent of the runtime's reader)."""

    def skip(kind: int, at: int) -> int:
        if kind in _SCALAR_SIZES:
            return at + _SCALAR_SIZES[kind]
        if kind == 8:
            return at + 8 + struct.unpack_from("<Q", data, at)[0]
        sub, count = struct.unpack_from("<IQ", data, at)
        at += 12
        if sub in _SCALAR_SIZES:
            return at + count * _SCALAR_SIZES[sub]
        for _ in range(count):
            at = skip(sub, at)
        return at

    (count,) = struct.unpack_from("<Q", data, 16)
    at, found = 24, {}
    for _ in range(count):
        (size,) = struct.unpack_from("<Q", data, at)
        key = data[at + 8 : at + 8 + size].decode()
        key_at, at = at + 8, at + 8 + size
        (kind,) = struct.unpack_from("<I", data, at)
        at += 4
        if kind == 8:
            found[key] = (key_at, at + 8, struct.unpack_from("<Q", data, at)[0])
        at = skip(kind, at)
    return found, at


LOAD = textwrap.dedent(
    """
    import json, sys
    from toolroute.runtime.router import Router
    for path in sys.argv[1:]:
        try:
            with Router.load(path, n_threads=1) as router:
                outcome = {"loaded": router.route("where is ORD-1?").kind}
        except Exception as exc:
            outcome = {"error": type(exc).__name__, "message": str(exc)}
        print(json.dumps(outcome), flush=True)
    """
)


def load_in_subprocess(paths: list[Path]) -> list[dict[str, Any]]:
    """`Router.load` + a route for each file, in another process: a crash fails the test, naming
    the file it died on, instead of ending the test run."""
    done = subprocess.run(
        [sys.executable, "-c", LOAD, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    outcomes = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0, f"died ({done.returncode}) on {paths[len(outcomes)]}: {done.stderr[-2000:]}"
    return outcomes


@pytest.fixture(scope="module")
def router_bytes(tmp_path_factory) -> bytes:
    return runtime_support.tiny_router_file(tmp_path_factory).read_bytes()


def test_a_router_file_cut_short_anywhere_is_refused_naming_it(router_bytes, tmp_path):
    fields, header_end = string_fields(router_bytes)
    key_at, value_at, _ = fields["toolroute.catalogue"]
    cuts = {
        "in the magic": 2,
        "in a key": key_at + 4,
        "in the catalogue": value_at + 100,
        "end of the key-values": header_end,
        "in the tensor infos": header_end + 100,
        "in the tensor data": len(router_bytes) // 2,
        "the last byte": len(router_bytes) - 1,
    }
    paths = []
    for name, size in cuts.items():
        path = tmp_path / f"cut-{name.replace(' ', '-')}.gguf"
        path.write_bytes(router_bytes[:size])
        paths.append(path)
    for (name, _), path, outcome in zip(cuts.items(), paths, load_in_subprocess(paths), strict=True):
        assert "error" in outcome, f"cut {name}: loaded"
        assert outcome["error"] in ("RouterFileError", "ValueError") and str(path) in outcome["message"], (
            outcome
        )
        if cuts[name] < header_end:  # the header reader says what is wrong
            assert outcome["error"] == "RouterFileError", outcome
            assert "truncated GGUF header" in outcome["message"] or "not a GGUF" in outcome["message"]


# Fields a flipped byte is caught in (a hash, a copy to compare, a parse), and where in the field.
DETECTED = [
    "toolroute.catalogue",
    "toolroute.catalogue_sha256",
    "toolroute.chat_template",
    "tokenizer.chat_template",
]


def flipped(data: bytes, position: int) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= 0x01
    return bytes(damaged)


def test_one_flipped_byte_in_the_checked_metadata_is_refused(router_bytes, tmp_path):
    fields, _ = string_fields(router_bytes)
    cases = {}
    for key in DETECTED:
        key_at, value_at, size = fields[key]
        for where, position in (
            ("first", value_at),
            ("middle", value_at + size // 2),
            ("last", value_at + size - 1),
        ):
            cases[f"{key} value {where}"] = position
        cases[f"{key} length"] = value_at - 8  # the length's low byte: the framing no longer adds up
    for key in ("toolroute.system_prompt", "toolroute.grammar_options", "toolroute.prompt_mode"):
        key_at, value_at, _ = fields[key]
        cases[f"{key} key name"] = key_at + 12  # a required field goes missing under its name
        cases[f"{key} length"] = value_at - 8
    paths = []
    for index, position in enumerate(cases.values()):
        path = tmp_path / f"flip-{index}.gguf"
        path.write_bytes(flipped(router_bytes, position))
        paths.append(path)
    for name, path, outcome in zip(cases, paths, load_in_subprocess(paths), strict=True):
        assert outcome.get("error") == "RouterFileError" and str(path) in outcome["message"], (name, outcome)


@pytest.mark.parametrize(
    "key",
    [
        "toolroute.system_prompt",
        "toolroute.prompt_mode",
        "toolroute.completion_suffix",
        "toolroute.grammar_options",
        "toolroute.base",
        "toolroute.manifest_sha256",
        "toolroute.grammar",  # not decoded with (regenerated), but stock llama.cpp users get it
        "toolroute.metadata_sha256",
    ],
)
def test_one_flipped_byte_in_the_other_metadata_is_refused(router_bytes, tmp_path, key):
    """Format 4's digest of every `toolroute.*` value: damage anywhere is a refused file."""
    _, value_at, size = string_fields(router_bytes)[0][key]
    path = tmp_path / "flip.gguf"
    path.write_bytes(flipped(router_bytes, value_at + size // 2))
    (outcome,) = load_in_subprocess([path])
    assert outcome.get("error") == "RouterFileError", outcome


# -- kill -9 while exporting ----------------------------------------------------------------------

# The child: embeds router metadata into a GGUF as `toolroute export` does (`publish_router_gguf`:
# the .gguf under a temporary name, renamed, then its .sha256), and SIGKILLs itself at a point.
EMBED_AND_DIE = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import gguf
    sys.path.insert(0, sys.argv[4])
    import runtime_support
    from toolroute.export import embed
    from toolroute.runtime import files

    source, destination, point = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    writer = gguf.GGUFWriter
    if point == "in-metadata":  # half of the key-value section is on disk
        write_kv = writer.write_kv_data_to_file
        def dying_kv(self):
            start = self.fout[0].tell()
            write_kv(self)
            self.fout[0].flush()
            os.truncate(self.fout[0].fileno(), (start + self.fout[0].tell()) // 2)
            die()
        writer.write_kv_data_to_file = dying_kv
    elif point.startswith("in-tensors:"):  # this many bytes of the file are on disk
        limit = int(point.split(":")[1])
        write_tensor = writer.write_tensor_data
        def dying_tensor(self, *args, **kwargs):
            write_tensor(self, *args, **kwargs)
            self.fout[0].flush()
            if self.fout[0].tell() >= limit:
                os.truncate(self.fout[0].fileno(), limit)
                die()
        writer.write_tensor_data = dying_tensor
    elif point == "before-rename":
        Path.replace = lambda self, target: die()
    elif point == "before-sidecar":
        embed.atomic_write_text = lambda *args, **kwargs: die()
    embed.publish_router_gguf(source, destination, runtime_support.router_metadata())
    """
)


@pytest.fixture(scope="module")
def finished_export(tmp_path_factory) -> tuple[Path, bytes]:
    """The base GGUF to embed into, and the router file a finished embed writes from it."""
    source = runtime_support.tiny_base_file(tmp_path_factory)
    out = tmp_path_factory.mktemp("finished")
    from toolroute.export.embed import publish_router_gguf

    publish_router_gguf(source, out / "router.gguf", runtime_support.router_metadata())
    return source, (out / "router.gguf").read_bytes()


KILL_POINTS = ["in-metadata", "in-tensors:2000000", "in-tensors:6000000", "before-rename", "before-sidecar"]


def test_kill_9_while_exporting_leaves_no_incomplete_router(finished_export, tmp_path):
    source, finished = finished_export
    support_dir = str(Path(runtime_support.__file__).parent)
    left: dict[str, list[Path]] = {}
    for point in KILL_POINTS:
        dist = tmp_path / point.replace(":", "-") / "dist"
        done = subprocess.run(
            [sys.executable, "-c", EMBED_AND_DIE, str(source), str(dist / "router.gguf"), point, support_dir],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == -signal.SIGKILL, (point, done.stderr[-2000:])
        left[point] = sorted(p for p in dist.rglob("*") if p.is_file())
        final = dist / "router.gguf"
        if point == "before-sidecar":  # complete and renamed; only its digest is missing
            assert final.read_bytes() == finished and not final.with_name("router.gguf.sha256").exists()
        else:  # nothing under the final name
            assert not final.exists() and [p.name for p in left[point]] == [".router.gguf.partial"]
    files = [path for paths in left.values() for path in paths]
    outcomes = dict(zip(files, load_in_subprocess(files), strict=True))
    for point, paths in left.items():
        for path in paths:
            outcome = outcomes[path]
            if "loaded" in outcome:  # whatever loads is complete: the finished router, byte for byte
                assert path.read_bytes() == finished, (
                    f"{point}: {path.name} loads but is not the finished router"
                )
            else:
                assert str(path) in outcome["message"]
        if point.startswith("in-"):  # a torn partial file is refused
            assert "error" in outcomes[paths[0]], point


# -- kill -9 while training writes a checkpoint -------------------------------------------------------

TRAIN_AND_DIE = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from toolroute.train.config import TrainConfig
    from toolroute.train.trainer import train

    config = TrainConfig.model_validate_json(sys.argv[1])
    target = sys.argv[2]  # die while writing this file of checkpoint-4 (epoch 2 of 3)
    save = torch.save
    def dying_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and str(f).endswith(os.path.join("checkpoint-4", target)):
            save(obj, f, *args, **kwargs)
            with open(f, "r+b") as handle:  # as a kill mid-write leaves it: cut short
                handle.truncate(os.path.getsize(f) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return save(obj, f, *args, **kwargs)
    torch.save = dying_save
    train(config)
    """
)


def test_kill_9_while_training_writes_a_checkpoint_leaves_a_run_that_resumes(tmp_path, tiny_base):
    pytest.importorskip("torch")
    from support import ROOT
    from toolroute.train.config import TrainConfig
    from toolroute.train.run_dir import RunDir
    from toolroute.train.trainer import train

    data = ROOT / "examples" / "customer_support"
    lines = (data / "train.jsonl").read_text().splitlines()[:16]  # 2 steps an epoch
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    config = TrainConfig(
        name="killed", data=tmp_path / "train.jsonl", tools=str(data / "tools.py"), base=str(tiny_base),
        mode="none", learning_rate=2e-2, epochs=3, batch_size=8, grad_accum=1, runs_dir=tmp_path / "runs",
        seed=7, method="lora",
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_AND_DIE, config.model_dump_json(), "optimizer.pt"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    run = RunDir(config.run_dir)
    checkpoints = sorted(p.name for p in run.checkpoints.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"] and not run.is_complete()
    assert not (run.checkpoints / "checkpoint-4" / "trainer_state.json").exists()  # torn mid-write

    manifest = train(config, resume=True)
    assert manifest is not None and manifest.metrics["steps"] == 6 and run.is_complete()
