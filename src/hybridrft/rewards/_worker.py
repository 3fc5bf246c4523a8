"""Child side of :class:`hybridrft.rewards.timeout.TimeLimitedWorker`.

Run as ``python -m hybridrft.rewards._worker FD`` where FD is one end of a socket pair. Protocol:
the parent sends ``{"sys_path": [...], "preload": [...]}``, the child imports the preload modules
and answers ``"ready"``; then each message is ``(reference, args, kwargs)`` and each answer is
``("ok", result, "")`` or ``("error", exception, traceback_text)``. End-of-file means stop.

This module imports only the standard library: the child must stay small (no torch) and start fast.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any


def resolve(reference: str) -> Any:
    """Import ``"package.module:qualified.name"`` and return the named object."""
    module_name, _, qualname = reference.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _exit_when_orphaned(parent_pid: int) -> None:
    # A task stuck in sympy never reads the pipe's end-of-file, so watch the parent separately.
    while True:
        if os.getppid() != parent_pid:
            os._exit(0)
        time.sleep(1.0)


def _send_error(conn: Connection, error: BaseException) -> None:
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    try:
        conn.send(("error", error, text))
    except Exception:  # the exception itself does not pickle: send its text instead
        conn.send(("error", RuntimeError(f"{type(error).__name__}: {error}"), text))


def serve(conn: Connection) -> None:
    """Answer tasks until the parent closes its end of the pipe."""
    hello = conn.recv()
    for path in hello["sys_path"]:
        if path not in sys.path:
            sys.path.append(path)
    for module_name in hello["preload"]:
        importlib.import_module(module_name)
    conn.send("ready")
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        except Exception as error:  # arguments that do not unpickle here (a class from __main__)
            _send_error(conn, error)
            continue
        try:
            reference, args, kwargs = message
            result = resolve(reference)(*args, **kwargs)
        except Exception as error:
            _send_error(conn, error)
            continue
        try:
            conn.send(("ok", result, ""))
        except Exception as error:  # the result does not pickle
            _send_error(conn, error)


def main() -> None:
    # Ctrl-C in a terminal reaches the whole process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    serve(Connection(int(sys.argv[1])))


if __name__ == "__main__":
    main()
