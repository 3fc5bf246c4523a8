"""A hard time limit for reward code that holds in any thread.

math-verify's own timeout uses ``signal.alarm``, which only works in the main thread of the main
interpreter; trainers call rewards from worker threads (and TRL from wherever it likes), and a
pathological expression can keep sympy busy for minutes. So the slow work runs in one small
persistent child process, fed one task at a time through a pipe. The parent waits with
``poll(timeout)``; when the time is up it kills the child and raises :class:`RewardTimeout`; the
next call starts a fresh child. One child serves thousands of calls, so process start-up (about a
second, mostly importing sympy) is paid once, not per completion.

The child is a fresh interpreter running ``python -m hybridrft.rewards._worker`` rather than a
``multiprocessing`` spawn/forkserver process: those re-import the parent's ``__main__`` in the
child, which would import torch through the training script or CLI (slow, hundreds of MB) and
would re-run a user's script that lacks an ``if __name__ == "__main__"`` guard. It is never a
fork either, since the parent holds torch's threads.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hybridrft.rewards.counters import COUNTERS

logger = logging.getLogger(__name__)

# Importing these at start-up keeps sympy's import time (about a second) out of the first task's
# time limit.
DEFAULT_PRELOAD = ("hybridrft.rewards.verify_task",)
STARTUP_TIMEOUT_S = 120.0
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds `hybridrft/`


class RewardTimeout(TimeoutError):
    """A call to the reward worker ran past its time limit; the worker was killed and restarts."""


class RewardWorkerError(RuntimeError):
    """The reward worker could not start, or died while running a task."""


class RewardWorkerStartError(RewardWorkerError):
    """The reward worker cannot start at all: the environment is broken (a missing or mismatched
    package), so every reward would be wrong. Raised to the caller instead of scoring 0."""


class RemoteTraceback(Exception):
    """Carries the worker-side traceback as the cause of an exception re-raised in the parent."""

    def __init__(self, traceback_text: str):
        super().__init__(traceback_text)
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return "\n\n" + self.traceback_text


Task = str | Callable[..., Any]


def task_reference(task: Task) -> str:
    """``"module:qualified.name"`` for a task, which the worker imports by name.

    Functions are sent by name, never pickled by value, so they must be importable in a fresh
    interpreter: module-level functions of an importable module (or builtins such as
    ``time.sleep``). Lambdas, nested functions and functions defined in ``__main__`` are refused
    here with a clear message instead of failing inside the worker.
    """
    if isinstance(task, str):
        if ":" not in task:
            raise ValueError(f"task name must look like 'package.module:function', got {task!r}")
        return task
    module = getattr(task, "__module__", None)
    qualname = getattr(task, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise ValueError(
            f"{task!r} cannot run in the reward worker: pass a module-level function of an "
            "importable module (not a lambda, a nested function or one defined in __main__)"
        )
    return f"{module}:{qualname}"


class TimeLimitedWorker:
    """One persistent child process that runs tasks under a hard wall-clock limit.

    Thread-safe: a lock serialises the tasks (one child runs one task at a time), so the time a
    caller waits for the lock does not count against its own limit. The child starts on the first
    call; after a timeout or a crash (or a kill from outside) it is restarted lazily by the next
    call, and each restart is counted in ``restarts`` and in the process-wide
    ``reward/worker_restarts`` counter (:mod:`hybridrft.rewards.counters`), so a trainer logs it.
    """

    def __init__(
        self,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        *,
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ):
        self.preload = tuple(preload)
        self.startup_timeout = startup_timeout
        self.restarts = 0  # how many children were started after the first (timeouts, crashes)
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._owner_pid = os.getpid()
        self._started_once = False
        self._atexit_registered = False

    @property
    def pid(self) -> int | None:
        """Process id of the running child, or None when none is running."""
        return self._process.pid if self._process is not None else None

    def call(self, task: Task, *args: Any, timeout: float, **kwargs: Any) -> Any:
        """Run ``task(*args, **kwargs)`` in the child and return its result.

        Raises:
            RewardTimeout: no result within ``timeout`` seconds; the child was killed.
            RewardWorkerError: the child could not start or died during the task.
            Exception: whatever the task raised in the child, re-raised here with the child's
                traceback attached as its cause.
        """
        reference = task_reference(task)
        with self._lock:
            self._forget_if_forked()
            conn = self._ensure_started()
            try:
                conn.send((reference, args, kwargs))
            except (BrokenPipeError, ConnectionError, EOFError, OSError):
                # The child died while idle (killed from outside, out of memory): start again.
                self._stop(kill=True)
                conn = self._ensure_started()
                conn.send((reference, args, kwargs))
            if not conn.poll(timeout):
                pid = self.pid
                self._stop(kill=True)
                raise RewardTimeout(
                    f"{reference} took longer than {timeout:g} s (worker {pid} killed)"
                )
            try:
                status, value, traceback_text = conn.recv()
            except (EOFError, ConnectionError, OSError) as error:
                exit_code = self._stop(kill=True)
                raise RewardWorkerError(
                    f"reward worker died while running {reference} (exit code {exit_code})"
                ) from error
            except Exception as error:  # it pickled in the child but does not unpickle here
                raise RewardWorkerError(f"cannot read the result of {reference}: {error}") from error
        if status == "ok":
            return value
        raise value from RemoteTraceback(traceback_text)

    def close(self) -> None:
        """Stop the child (it exits on end-of-file; killed if it does not within a second)."""
        with self._lock:
            self._forget_if_forked()
            self._stop(kill=False)

    def _ensure_started(self) -> Connection:
        if self._conn is not None and self._process is not None and self._process.poll() is None:
            return self._conn
        if self._process is not None:
            self._stop(kill=True)
        return self._start()

    def _start(self) -> Connection:
        parent_end, child_end = multiprocessing.Pipe(duplex=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "hybridrft.rewards._worker", str(child_end.fileno())],
                pass_fds=(child_end.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
                close_fds=True,
            )
        finally:
            child_end.close()  # the child holds its own copy; ours would hide its exit from poll
        self._process, self._conn = process, parent_end
        if self._started_once:
            self.restarts += 1
            COUNTERS.add(worker_restarts=1)
        self._started_once = True
        if not self._atexit_registered:
            atexit.register(self.close)
            self._atexit_registered = True
        try:
            parent_end.send({"sys_path": list(sys.path), "preload": self.preload})
            ready = parent_end.poll(self.startup_timeout)
            message = parent_end.recv() if ready else None
        except (EOFError, ConnectionError, OSError):
            message = None
        if message != "ready":
            try:  # a child that crashed on import is exiting right now: report its code, not a timeout
                process.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                pass
            exit_code = self._stop(kill=True)
            reason = "timed out" if exit_code is None else f"exited with code {exit_code}"
            raise RewardWorkerStartError(
                f"reward worker failed to start ({reason}; preload {self.preload}); "
                "its error, if any, is on stderr above"
            )
        logger.debug("reward worker %d started", process.pid)
        return parent_end

    def _stop(self, *, kill: bool) -> int | None:
        """Stop the child if any; returns its exit code (None if it had to be killed)."""
        process, conn = self._process, self._conn
        self._process, self._conn = None, None
        if conn is not None:
            conn.close()
        if process is None:
            return None
        exit_code = process.poll()
        if exit_code is None and not kill:
            try:
                exit_code = process.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        if exit_code is None:
            process.kill()
            process.wait()
        return exit_code

    def _forget_if_forked(self) -> None:
        # After os.fork (a DataLoader worker, say) the child process must not share our pipe with
        # the parent: drop the handles without touching the parent's worker.
        if self._owner_pid != os.getpid():
            self._process, self._conn = None, None
            self._owner_pid = os.getpid()
            self._started_once = False  # this process's first worker is a start, not a restart


_shared_worker: TimeLimitedWorker | None = None
_shared_lock = threading.Lock()


def shared_worker() -> TimeLimitedWorker:
    """The process-wide worker the built-in rewards use (created on first use, closed at exit)."""
    global _shared_worker
    with _shared_lock:
        if _shared_worker is None or _shared_worker._owner_pid != os.getpid():
            _shared_worker = TimeLimitedWorker()
        return _shared_worker


def call_with_time_limit(task: Task, *args: Any, timeout: float, **kwargs: Any) -> Any:
    """Run ``task`` in the shared worker under a hard time limit (see TimeLimitedWorker)."""
    return shared_worker().call(task, *args, timeout=timeout, **kwargs)


def _reset_after_fork() -> None:
    # A fork can happen while another thread holds these locks; the forked child starts clean.
    global _shared_worker, _shared_lock
    _shared_worker = None
    _shared_lock = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX only
    os.register_at_fork(after_in_child=_reset_after_fork)
