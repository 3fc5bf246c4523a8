"""The run folder: one run at a time, never clobbered, and a resume that cannot mix two configs.

- ``RunFolderLock``: an exclusive lock (``flock``) on ``<output_dir>/.hybridrft.lock`` for the life of
  a run, held by rank 0. The file records who holds it (pid, host, start time, command), so a second
  run is told which run is in its way, and a lock left by a process that died is named and taken
  over (the kernel releases a dead process's ``flock``; the record it left says who it was). Where
  the file system has no ``flock`` (some network and FUSE mounts), a lock file created with
  ``O_EXCL`` stands in: stale when it names a dead process on this host, and named otherwise.
- ``prepare_run_folder``: a fresh run needs an empty folder; ``train.overwrite`` first removes the
  outputs of the run that was there (and says which), ``--resume`` continues it.
- ``resume_config_changes``: the config a checkpoint was trained with against the one resuming it;
  settings that change what the earlier steps meant refuse, the rest are listed and recorded.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Iterable

from hybridrft.config.loading import _valid_keys
from hybridrft.config.schema import config_class
from hybridrft.train.checkpoint import replace_durably

logger = logging.getLogger(__name__)

LOCK_FILE = ".hybridrft.lock"
FALLBACK_LOCK_FILE = ".hybridrft.lock.excl"  # where flock is not supported
CONFIG_FILE = "config.yaml"
CONFIG_CHANGES_FILE = "config_changes.jsonl"
# everything a run (and its report) writes into its folder; train.overwrite removes these and nothing else
RUN_OUTPUTS = (CONFIG_FILE, CONFIG_CHANGES_FILE, "metrics.jsonl", "samples.jsonl", "checkpoints", "final_model",
               "eval", "plots", "analysis", "report.html")
# temporary folders of an interrupted final save, temporary files of an interrupted rewrite of a run's file
# (checkpoint.replace_durably writes .NAME.tmp)
HIDDEN_RUN_OUTPUTS = (".final_model-",) + tuple(f".{name}.tmp" for name in RUN_OUTPUTS if "." in name)

# settings whose change on resume would make the earlier steps mean something else: the method, the
# weights and tokenizer, the data and its split, the order of prompts, the shape of a group
FIXED_ON_RESUME = (
    "method", "model.name_or_path", "model.lora.rank", "model.lora.alpha", "model.lora.target_modules",
    "data.", "eval.size", "group.num_generations", "group.demos_per_prompt", "train.prompts_per_step", "train.seed",
)
# settings that say where and how to run, not what: never compared
NOT_COMPARED = ("train.output_dir", "train.resume", "train.overwrite", "train.allow_config_changes")


class RunFolderError(RuntimeError):
    """The run folder cannot be used as asked: in use, not empty, not writable, or a config mismatch."""


# ------------------------------------------------------------------ the lock

def _holder_record() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:500]}


def _describe(record: dict[str, Any] | None) -> str:
    if not record:
        return "a process that left no record"
    return (f"pid {record.get('pid')} on host {record.get('host')}, started {record.get('started')} "
            f"({record.get('command') or 'unknown command'})")


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        record = json.loads(text) if text.strip() else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _unwritable(folder: Path, error: OSError) -> RunFolderError:
    if error.errno == errno.ENOSPC:
        return RunFolderError(f"train.output_dir {folder} is on a full file system (no space left to write in it); "
                              "free some space or choose another train.output_dir")
    return RunFolderError(f"train.output_dir {folder} is not writable ({error.strerror or error}); "
                          "choose another train.output_dir or fix its permissions")


class RunFolderLock:
    """Exclusive use of a run folder; ``acquire`` raises ``RunFolderError`` naming the run holding it."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.fd: int | None = None
        self.fallback: Path | None = None
        self.stale: dict[str, Any] | None = None  # the record a dead holder left, if any

    def acquire(self) -> "RunFolderLock":
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise _unwritable(self.folder, error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderError(
                f"{self.folder} is in use by another run: {_describe(_read_record(self.path))}. Wait for it to "
                "finish or stop it, or choose another train.output_dir"
            ) from None
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            logger.warning("the file system of %s does not support flock (%s); locking with an exclusive lock file",
                           self.folder, error.strerror)
            return self._acquire_fallback()
        self.fd = fd
        left = _read_record(self.path)
        if left:  # a holder that released its lock clears the record: this one died holding it
            self.stale = left
            logger.warning("%s: took over a stale lock left by %s, which is no longer running",
                           self.folder, _describe(left))
        self._write_record(fd)
        return self

    def _write_record(self, fd: int) -> None:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_holder_record()).encode(), 0)
            os.fsync(fd)
        except OSError as error:
            self.release()
            raise _unwritable(self.folder, error) from None

    def _acquire_fallback(self) -> "RunFolderLock":
        path = self.folder / FALLBACK_LOCK_FILE
        for _ in range(2):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = _read_record(path)
                here = holder and holder.get("host") == socket.gethostname()
                if here and not _process_alive(int(holder.get("pid", -1))):
                    self.stale = holder
                    logger.warning("%s: removing a stale lock left by %s, which is no longer running",
                                   self.folder, _describe(holder))
                    path.unlink(missing_ok=True)
                    continue
                raise RunFolderError(
                    f"{self.folder} is in use by another run: {_describe(holder)} (lock file {path}; if that run "
                    "is gone, remove the file)"
                ) from None
            except OSError as error:
                raise _unwritable(self.folder, error) from None
            self.fallback = path
            self._write_record(fd)
            os.close(fd)
            return self
        raise RunFolderError(f"could not lock {self.folder} (lock file {path} keeps reappearing)")

    def release(self) -> None:
        """Clear the record (a clean end is not a stale lock) and unlock; the lock file itself stays,
        so that no two processes can ever hold locks on two different files of the same name."""
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        if self.fallback is not None:
            self.fallback.unlink(missing_ok=True)
            self.fallback = None


# ------------------------------------------------------------------ the folder's contents

def run_outputs_in(folder: Path) -> list[Path]:
    """What a run wrote in ``folder``: its outputs, an interrupted final save, and a tracker's log
    folder (named like the run folder, as accelerate's TensorBoard tracker names it)."""
    found = [folder / name for name in RUN_OUTPUTS if (folder / name).exists()]
    found += [p for p in folder.iterdir() if p.name.startswith(HIDDEN_RUN_OUTPUTS)] if folder.is_dir() else []
    tracker = folder / folder.name
    if tracker.is_dir() and any(tracker.rglob("events.out.tfevents*")):
        found.append(tracker)
    return found


def prepare_run_folder(folder: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a fresh run in a folder that holds anything (a run's outputs or anything else); with
    ``overwrite``, remove the previous run's outputs first (said in a warning) and keep the rest."""
    contents = sorted(p for p in folder.iterdir() if p.name not in (LOCK_FILE, FALLBACK_LOCK_FILE)) if folder.is_dir() else []
    if resume or not contents:
        return
    names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in contents[:8]) + (" ..." if len(contents) > 8 else "")
    if not overwrite:
        holds = "a run" if any((folder / name).exists() for name in ("checkpoints", "metrics.jsonl", "final_model")) else "files"
        raise RunFolderError(
            f"train.output_dir {folder} already holds {holds} ({names}); pass --resume to continue the run in it, "
            "train.overwrite=true to start over in it (the previous run's outputs are removed), or choose another "
            "train.output_dir"
        )
    outputs = run_outputs_in(folder)
    kept = [p.name for p in contents if p not in outputs]
    if outputs:
        logger.warning("train.overwrite: removing the previous run's %s from %s%s",
                       ", ".join(p.name for p in outputs), folder,
                       f" (keeping {', '.join(kept)}: not written by a run)" if kept else "")
    for path in outputs:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


# ------------------------------------------------------------------ the config on resume

def flat_config(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config as a plain nested dict -> dotted keys (a free-form mapping such as ``data.fields`` is one value)."""
    free_form = {key for key, is_free in _valid_keys(config_class()).items() if is_free}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in free_form:
            flat.update(flat_config(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _matches(key: str, patterns: Iterable[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) or key.startswith(p + ".") for p in patterns)


def resume_config_changes(saved: dict[str, Any], new: dict[str, Any], *, allowed: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
    """``{key: (old, new)}`` for every setting that differs between the config a checkpoint was
    trained with and the resuming one (keys both have). Raises ``RunFolderError`` when a setting of ``FIXED_ON_RESUME``
    changed and ``allowed`` (``train.allow_config_changes``) does not name it (or a section above it)."""
    old_flat, new_flat = flat_config(saved), flat_config(new)
    changes = {  # a key only one side has (a setting added or removed by an upgrade) is not a change of the run's
        key: (old_flat[key], new_flat[key])
        for key in sorted(set(old_flat) & set(new_flat))
        if not _matches(key, NOT_COMPARED) and old_flat[key] != new_flat[key]
    }
    allowed = tuple(allowed)
    refused = {k: v for k, v in changes.items() if _matches(k, FIXED_ON_RESUME) and not _matches(k, allowed)}
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise RunFolderError(
            f"cannot resume: settings that change what the earlier steps meant differ from the checkpoint's config "
            f"({listed}). Resume with the run's own settings, start a new run (another train.output_dir), or, if "
            f"you mean it, allow them: train.allow_config_changes=[{','.join(refused)}]"
        )
    return changes


def record_config_changes(folder: Path, step: int, changes: dict[str, tuple[Any, Any]]) -> None:
    """Append to ``config_changes.jsonl`` the settings that changed when the run resumed after ``step``
    (they apply from step + 1), after dropping the records of steps the resume is redoing."""
    path = folder / CONFIG_CHANGES_FILE
    kept: list[str] = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:  # a record cut off by a kill
                continue
    if changes:
        kept.append(json.dumps({"step": step, "applies_from_step": step + 1,
                                "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                                "changes": {k: {"old": old, "new": new} for k, (old, new) in changes.items()}}))
    if kept or path.exists():
        replace_durably(path, "".join(line + "\n" for line in kept).encode())
