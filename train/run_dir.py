"""A training run's directory: what it holds, and whether it is complete.

`runs/NAME/INCOMPLETE` exists from the first write until the manifest is written (atomically) at
the very end; export refuses a run that still has it, so an interrupted run never looks finished.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from toolroute.grammars import Catalogue
from toolroute.runtime.files import atomic_write_text

from .augment import AugmentCounts
from .bases import BaseIdentity
from .copied import CopyDecision
from .recipe import TrainingPlan

MANIFEST_FORMAT = "toolroute-run/1"


class DataIdentity(BaseModel):
    path: str
    sha256: str
    examples: int
    used: int  # routing rows trained
    dropped_too_long: int
    answers: int = 0  # answer-step rows trained (a tool result and the reply to it), beside `used`


class RunManifest(BaseModel):
    format: str = MANIFEST_FORMAT
    name: str
    status: str = "complete"
    base: BaseIdentity
    catalogue: list[dict[str, Any]]
    catalogue_sha256: str
    prompt_mode: str
    system_prompt: str
    chat_template: str
    completion_suffix: str
    # Every string argument, copied or not and why (absent in manifests written before: none copied).
    copied_arguments: list[CopyDecision] = []
    # The recipe, epochs and estimate the run was planned with, and the rows augmentation added
    # (absent in manifests written before: planned by hand, not augmented).
    plan: TrainingPlan | None = None
    augmentation: AugmentCounts | None = None
    no_tool_repeated: int = 0  # no_tool rows repeated for `no_tool_share` (absent before: none)
    # Answer-step rows the run trained (the reply to a tool's output); 0: it learned routing only
    # (absent in manifests written before: 0). Export writes it into the router file.
    answer_rows: int = 0
    data: dict[str, DataIdentity]
    config: dict[str, Any]
    metrics: dict[str, float | int | None]
    wall_time_s: float
    device: str
    versions: dict[str, str]

    def load_catalogue(self, where: str = "manifest") -> Catalogue:
        """The run's catalogue, checked against the hash recorded with it."""
        catalogue = Catalogue.from_openai(self.catalogue, where=f"{where} catalogue")
        if catalogue.sha256 != self.catalogue_sha256:
            raise ValueError(f"{where}: the run's catalogue does not match its recorded hash")
        return catalogue


class IncompleteRun(RuntimeError):
    pass


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    adapter = property(lambda self: self.path / "adapter")  # method lora
    trained_weights = property(lambda self: self.path / "trained.safetensors")  # method full
    tokenizer = property(lambda self: self.path / "tokenizer")
    checkpoints = property(lambda self: self.path / "checkpoints")
    manifest_path = property(lambda self: self.path / "manifest.json")
    config_path = property(lambda self: self.path / "config.toml")
    loss_csv = property(lambda self: self.path / "loss.csv")
    loss_png = property(lambda self: self.path / "loss.png")
    marker = property(lambda self: self.path / "INCOMPLETE")

    def is_complete(self) -> bool:
        return self.manifest_path.is_file() and not self.marker.exists()

    def start(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.marker.write_text("training has not finished; this run cannot be exported\n")

    def finish(self, manifest: RunManifest) -> None:
        atomic_write_text(self.manifest_path, manifest.model_dump_json(indent=2) + "\n")
        self.marker.unlink()

    def load_manifest(self) -> RunManifest:
        if not self.manifest_path.is_file() or self.marker.exists():
            raise IncompleteRun(f"{self.path}: the run is incomplete (interrupted or still training)")
        return RunManifest.model_validate(json.loads(self.manifest_path.read_text(encoding="utf-8")))

    def write_losses(self, rows: list[dict[str, Any]]) -> None:
        """loss.csv and a PNG of the curves (train loss per step, eval loss per evaluation)."""
        columns = ["step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm"]
        lines = [",".join(columns)]
        lines += [",".join("" if row.get(c) is None else f"{row[c]}" for c in columns) for row in rows]
        atomic_write_text(self.loss_csv, "\n".join(lines) + "\n")
        self._plot(rows)

    def _plot(self, rows: list[dict[str, Any]]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
        evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
        figure, axis = plt.subplots(figsize=(7, 4), dpi=120)
        if train:
            axis.plot(*zip(*train, strict=True), label="train loss", linewidth=1.2)
        if evals:
            axis.plot(*zip(*evals, strict=True), "o-", label="eval loss", linewidth=1.5)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("loss (completion tokens)")
        axis.set_title(f"{self.path.name}: SFT")
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        tmp = self.loss_png.with_suffix(".tmp.png")
        figure.savefig(tmp)
        plt.close(figure)
        tmp.replace(self.loss_png)


def read_loss_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))
