"""Atomic, durable, verified checkpoints: a resumed run continues exactly where the saved one stopped.

A checkpoint is a folder ``checkpoints/step-NNNNNN`` holding

- ``model/``: a ``save_pretrained`` folder (weights and tokenizer) that transformers and vLLM load;
  for a LoRA policy (a PEFT model) the adapter only (``adapter_config.json``,
  ``adapter_model.safetensors``) and the tokenizer, the frozen base coming from the run's model;
- ``optimizer.pt``, ``scheduler.pt``: optimizer and LR-scheduler state (under FSDP2 the optimizer
  state is a folder ``optimizer/`` of per-process shards written with torch.distributed.checkpoint);
- ``trainer_state.pt``: step, data cursor, the objective's state (e.g. SASR's gradient norms and
  generator) and every RNG state (Python, NumPy, torch CPU and CUDA);
- ``config.yaml``: the config the steps up to this one were trained with (compared on resume);
- ``manifest.json``, written last: every other file's name, size and SHA-256.

How it is written: into a temporary folder, every file fsynced, the manifest written and fsynced,
the folder fsynced, renamed into place, and the parent folder fsynced, so neither a crash nor a
power loss leaves a folder that looks complete and is not. How it is read: the manifest is checked
first (a missing, truncated or altered file, or a missing manifest, makes the checkpoint damaged and
resume falls back to the previous complete one, with a warning naming what was wrong), and the state
files are loaded with ``torch.load(weights_only=True)``, which unpickles tensors and plain Python
values only: a state file that would construct any other object (and so could run code) is refused.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybridrft.models import save_policy

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")
TEMP_PREFIX = ".step-"  # a checkpoint being written; never listed, removed when a run starts
MANIFEST = "manifest.json"
CONFIG_FILE = "config.yaml"
STATE_FILES = ("optimizer.pt", "scheduler.pt", "trainer_state.pt")
MODEL_CONFIGS = ("model/config.json", "model/adapter_config.json")  # a full model's folder, a LoRA adapter's
PAUSE_ENV = "HYBRIDRFT_TEST_PAUSE_AT"  # test-only: "<point>:<step>" stops the process there (see pause_point)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used as it is: damaged, incomplete, or not plain data."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk); the previous checkpoints are intact."""


# ------------------------------------------------------------------ RNG states as plain data

def rng_states() -> dict[str, Any]:
    """Every RNG state as tensors and plain Python values (loadable with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    python = states["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss"]))
    numpy = states["numpy"]
    np.random.set_state(
        (numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["cached"])
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ------------------------------------------------------------------ writing

def pause_point(point: str, step: int, until=None) -> None:
    """Test-only: with ``HYBRIDRFT_TEST_PAUSE_AT=<point>:<step>``, announce the pause on stderr and
    wait here to be killed (or signalled), so a test can stop a training process at an exact moment;
    ``until``: a condition that ends the wait (checked every 50 ms)."""
    if os.environ.get(PAUSE_ENV) == f"{point}:{step}":
        import sys
        import time

        print(f"hybridrft: paused at {point}:{step}", file=sys.stderr, flush=True)
        while until is None or not until():
            time.sleep(0.05)


def _write_chunk(fd: int, data: memoryview) -> int:
    return os.write(fd, data)


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (every byte on disk before the function returns)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[_write_chunk(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably: written to ``.NAME.tmp`` beside it,
    fsynced, renamed over it, the folder fsynced. A failed write leaves ``path`` as it was and no
    temporary file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write_durably(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _size(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def new_checkpoint_folder(root: Path, step: int) -> Path:
    """The temporary folder a checkpoint is written into (renamed into place when complete)."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{step:06d}-", dir=root))


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
    model_state: dict[str, Any] | None = None,
    folder: Path | None = None,
    config_yaml: str | None = None,
) -> Path:
    """Write ``root/step-{step}`` atomically and durably and keep only the newest ``keep`` checkpoints.

    ``model_state``: the full weights when ``model``'s own are sharded (gathered by the caller).
    ``folder``: a temporary folder from ``new_checkpoint_folder`` that already holds the optimizer's
    shards in ``optimizer/`` (then ``optimizer`` is None). ``config_yaml``: the run's config, kept as
    ``config.yaml``.

    A write that fails (``ENOSPC``: a full disk) removes its temporary folder, leaves every earlier
    checkpoint as it was, and raises ``CheckpointWriteError`` naming the folder and the space needed.
    """
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = folder or new_checkpoint_folder(root, step)
    try:
        if model_state is not None:
            model.save_pretrained(tmp / "model", state_dict=model_state, safe_serialization=True)
            tokenizer.save_pretrained(tmp / "model")
        else:
            save_policy(model, tokenizer, tmp / "model", merge=False)  # a LoRA policy: its adapter only
        for f in (tmp / "model").iterdir():
            fsync_path(f)
        pause_point("checkpoint_write", step)
        if optimizer is not None:
            write_durably(tmp / "optimizer.pt", _torch_bytes(optimizer.state_dict()))
        for shard in sorted((tmp / "optimizer").rglob("*")) if optimizer is None else []:
            fsync_path(shard)  # every process's shard, in whatever folders the engine wrote them
        write_durably(tmp / "scheduler.pt", _torch_bytes(scheduler.state_dict()))
        write_durably(tmp / "trainer_state.pt", _torch_bytes({**trainer_state, "rng": rng_states()}))
        if config_yaml is not None:
            write_durably(tmp / CONFIG_FILE, config_yaml.encode())
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "step": step,
            "files": {str(p.relative_to(tmp)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files},
        }
        write_durably(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        fsync_path(tmp / "model")
        if (tmp / "optimizer").is_dir():
            fsync_path(tmp / "optimizer")
        fsync_path(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_path(root)
    except Exception as error:
        written = _folder_bytes(tmp) if tmp.exists() else 0
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_disk_full(error):
            raise
        previous = latest_checkpoint(root)
        needed = _folder_bytes(previous) if previous is not None else written
        free = shutil.disk_usage(root).free
        kept = f"the previous checkpoint {previous.name} is intact" if previous else "there is no earlier checkpoint"
        raise CheckpointWriteError(
            f"no space left to write checkpoint {final.name} in {root}: it needs about {_size(needed)} "
            f"and {_size(free)} are free; {kept}. Free some space and run again with --resume"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def is_disk_full(error: BaseException) -> bool:
    """``ENOSPC`` from our writes (an ``OSError``) or from a library's own writer (safetensors reports
    it as ``SafetensorError: ... No space left on device (os error 28)``), anywhere in the chain."""
    while error is not None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error) or "os error 28" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def remove_partial_checkpoints(root: Path) -> list[Path]:
    """Remove the temporary folders that a process killed while saving left behind."""
    removed = [p for p in root.glob(f"{TEMP_PREFIX}*") if p.is_dir()] if root.is_dir() else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


# ------------------------------------------------------------------ reading

def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under ``root``, oldest first (temporary folders are ignored)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def checkpoint_problems(path: Path) -> list[str]:
    """What is wrong with a checkpoint folder, checked against its manifest ([] when it is whole)."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return [f"{MANIFEST} is missing (the checkpoint was not finished)"]
    try:
        manifest = json.loads(manifest_path.read_text())
        listed = manifest["files"]
    except (ValueError, KeyError, TypeError) as error:
        return [f"{MANIFEST} is not readable: {error}"]
    sharded_optimizer = any(name.startswith("optimizer/") for name in listed)
    problems = [
        f"{MANIFEST} does not list {name}"
        for name in STATE_FILES
        if name not in listed and not (name == "optimizer.pt" and sharded_optimizer)
    ]
    if not any(name in listed for name in MODEL_CONFIGS):  # a full model, or a LoRA adapter
        problems.append(f"{MANIFEST} lists neither {' nor '.join(MODEL_CONFIGS)}")
    for name, expected in listed.items():
        file = path / name
        if not file.is_file():
            problems.append(f"{name} is missing")
        elif file.stat().st_size != expected["bytes"]:
            problems.append(f"{name} has {file.stat().st_size} bytes, the manifest says {expected['bytes']}")
        elif file_sha256(file) != expected["sha256"]:
            problems.append(f"{name} does not match its SHA-256 in the manifest")
    return problems


def latest_complete_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint that passes its manifest check; each newer damaged one is reported."""
    for path in reversed(list_checkpoints(root)):
        problems = checkpoint_problems(path)
        if not problems:
            return path
        logger.warning("checkpoint %s is damaged (%s); falling back to the previous one", path, "; ".join(problems))
    return None


def checkpoint_to_resume(root: Path, *, resume: bool, is_main: bool = True, wait=lambda: None) -> Path | None:
    """The checkpoint a run continues from: None for a fresh run, else the newest complete one.

    (Whether a fresh run may start in the folder at all is ``run_folder.prepare_run_folder``'s to say.)
    Rank 0 first removes the temporary folders a killed save left (``wait`` holds the others until it has).
    """
    if not resume:
        return None
    existing = list_checkpoints(root)
    if is_main:
        remove_partial_checkpoints(root)
    wait()
    found = latest_complete_checkpoint(root)  # damaged ones are skipped, with a warning
    if found is None and existing:
        problems = "; ".join(f"{p.name}: {', '.join(checkpoint_problems(p))}" for p in existing)
        raise CheckpointError(f"no complete checkpoint in {root} to resume from ({problems})")
    if found is None:
        logger.warning("train.resume is set but %s has no checkpoint; starting from step 0", root)
    return found


def safe_load(path: Path) -> Any:
    """``torch.load`` of tensors and plain values only; anything else is refused, never constructed."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # pickle.UnpicklingError for foreign objects; others for corrupt bytes
        raise CheckpointError(
            f"{path}: refusing to load it: it holds something other than tensors and plain values "
            f"(a checkpoint file from elsewhere can run code when unpickled). {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}"
        ) from None


def load_training_state(path: Path, *, optimizer, scheduler, load_sharded_optimizer=None) -> dict[str, Any]:
    """Restore optimizer and scheduler in place; return the trainer state (RNGs already restored).

    The model weights are loaded by the caller from ``path / "model"``. The caller has checked the
    manifest (``latest_complete_checkpoint``). An optimizer saved in shards is restored by
    ``load_sharded_optimizer(folder)`` (every process reads its own shard).
    """
    if (path / "optimizer").is_dir():
        if load_sharded_optimizer is None:
            raise CheckpointError(f"{path} holds a sharded (FSDP2) optimizer state; resume it under FSDP2")
        load_sharded_optimizer(path / "optimizer")
    else:
        optimizer.load_state_dict(safe_load(path / "optimizer.pt"))
    scheduler_state, state = (safe_load(path / name) for name in STATE_FILES[1:])
    scheduler.load_state_dict(scheduler_state)
    restore_rng_states(state.pop("rng"))
    return state
