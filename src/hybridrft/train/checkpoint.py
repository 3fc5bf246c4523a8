"""Atomic, complete checkpoints: a resumed run continues exactly where the saved one stopped.

A checkpoint is a folder ``checkpoints/step-NNNNNN`` holding

- ``model/``: a ``save_pretrained`` folder (weights and tokenizer) that transformers and vLLM load;
- ``optimizer.pt``, ``scheduler.pt``: optimizer and LR-scheduler state;
- ``trainer_state.pt``: step, data cursor, the objective's state (e.g. SASR's gradient norms and
  generator) and every RNG state (Python, NumPy, torch CPU and CUDA).

It is written under a temporary name and renamed into place, so a crash mid-save never leaves a
half-written checkpoint that looks complete.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model,
    tokenizer,
    optimizer,
    scheduler,
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write ``root/step-{step}`` atomically and keep only the newest ``keep`` checkpoints."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:06d}-", dir=root))
    try:
        model.save_pretrained(tmp / "model", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "model")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({**trainer_state, "rng": rng_states()}, tmp / "trainer_state.pt")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary folders are ignored)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def load_training_state(path: Path, *, optimizer, scheduler) -> dict[str, Any]:
    """Restore optimizer and scheduler in place; return the trainer state (RNGs already restored).

    The model weights are loaded by the caller from ``path / "model"``.
    """
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    restore_rng_states(state.pop("rng"))
    return state
