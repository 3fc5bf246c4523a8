"""Stopping on SIGTERM and SIGINT: the last finished step is checkpointed, then the run exits.

A cluster scheduler sends SIGTERM some seconds before it kills a job (Slurm's KillWait, 30 s by
default; Kubernetes' terminationGracePeriodSeconds, 30 s; torchrun waits 30 s after forwarding a
signal to its workers); Ctrl-C sends SIGINT. Either one asks the trainer to stop:

- Work that has not changed the weights yet (planning, sampling, rewards, the old and reference
  log-probs, an evaluation) is abandoned: with one process at once, from inside the signal handler
  (``StopRequested`` is raised where the program is, like ``KeyboardInterrupt``); with several
  processes at the next point where they compare notes (after sampling, after scoring, before the
  first update), so that every process abandons the same step.
- Once a step's first optimizer update has begun, the step is finished.

Either way the trainer then checkpoints the last finished step (rewound to the state it had when
the abandoned step began: data cursor, objective state, RNGs) and raises ``TrainingStopped``;
``hybridrft train`` prints what it saved and how to resume and exits with ``STOPPED_EXIT_CODE``.
A second signal stops the process at once (the default action of that signal), except within
``DUPLICATE_WINDOW_S`` of the first: launchers such as torchrun forward the Ctrl-C a terminal already
delivered to every process of its group, so each worker receives the same signal twice in a moment.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

STOPPED_EXIT_CODE = 75  # EX_TEMPFAIL of sysexits.h: stopped on request, resumable (retry with --resume)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DUPLICATE_WINDOW_S = 1.0


class StopRequested(BaseException):
    """Raised inside work being abandoned; a ``BaseException`` so that no ``except Exception`` of the
    work itself (a reward function's guard, a retry loop) swallows it."""


class TrainingStopped(RuntimeError):
    """The run stopped on a signal after checkpointing its last finished step."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path | None, output_dir: Path, detail: str = ""):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        if checkpoint is None:
            saved = "no step had finished, nothing was saved"
        else:
            saved = f"saved the checkpoint of step {step}: {checkpoint}"
        super().__init__(f"stopped by {signal_name}{detail}; {saved}. Continue the run with: hybridrft train <recipe> "
                         f"train.output_dir={output_dir} --resume (the same recipe and overrides)")


class StopSignals:
    """SIGTERM and SIGINT handlers for the life of a training run (main thread only; elsewhere the
    signals keep their actions and ``requested`` stays None).

    ``interruptible()``: a block of work that may be abandoned the moment a signal arrives (the
    handler raises ``StopRequested`` in it); outside such blocks the request waits in ``requested``.
    """

    def __init__(self, *, immediate: bool = True):
        self.immediate = immediate  # False under several processes: they abandon work together
        self.requested: str | None = None
        self.received_at = 0.0
        self._interruptible = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for signum, action in self._previous.items():
            signal.signal(signum, action)
        self._previous.clear()
        return False

    def _handle(self, signum: int, frame) -> None:
        now = time.monotonic()
        if self.requested is not None:
            if now - self.received_at < DUPLICATE_WINDOW_S:
                return  # the same request, delivered twice
            signal.signal(signum, signal.SIG_DFL)  # a second request: stop now
            os.kill(os.getpid(), signum)
            return
        self.requested, self.received_at = signal.Signals(signum).name, now
        if self._interruptible and self.immediate:
            self._interruptible = False
            raise StopRequested(self.requested)

    @contextmanager
    def interruptible(self):
        """Work inside may be abandoned at once (one process) on a stop request."""
        if self.requested is not None and self.immediate:
            raise StopRequested(self.requested)
        previous, self._interruptible = self._interruptible, True
        try:
            yield
        finally:
            self._interruptible = previous
