"""Which checkpoint a resumed run continues from: the newest one written in full.

The Trainer writes a checkpoint's files one after another into `checkpoint-N/`, its
`trainer_state.json` last. A process killed on the way (kill -9, a lost machine) leaves that
directory without the state, or with it cut short, and Transformers' own pick (the highest N,
`resume_from_checkpoint=True`) then fails to resume with FileNotFoundError. A checkpoint is
complete when its trainer state parses and names its own step; a torn one is skipped (the
resumed run writes it again when it gets there).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

_CHECKPOINT = re.compile(r"checkpoint-(\d+)")
STATE_FILE = "trainer_state.json"


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The complete `checkpoint-N` directory with the highest N, or None."""
    if not folder.is_dir():
        return None
    steps = []
    for path in folder.iterdir():
        match = _CHECKPOINT.fullmatch(path.name)
        if match and path.is_dir() and _complete(path, int(match.group(1))):
            steps.append((int(match.group(1)), path))
    return max(steps)[1] if steps else None


def _complete(path: Path, step: int) -> bool:
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, unreadable, cut short
        return False
    return isinstance(state, dict) and state.get("global_step") == step
