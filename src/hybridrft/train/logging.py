"""Run-folder logging: ``metrics.jsonl``, sample completions, evaluation generations, progress bar."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from hybridrft.report.runs import read_jsonl
from hybridrft.train.checkpoint import replace_durably

logger = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLogger:
    """Appends one JSON object per line; a resumed run first drops the lines after its checkpoint."""

    def __init__(self, run_dir: Path, *, truncate_after: int = 0, accelerator=None, write: bool = True):
        """``write=False`` (every process of a run but rank 0): nothing is written."""
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        self.accelerator = accelerator
        self.write = write
        if not write:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        for path in (self.path, self.samples_path):
            _keep_lines_up_to(path, truncate_after)

    def log(self, metrics: dict[str, Any], kind: str = "train") -> None:
        if not self.write:
            return
        record = {"kind": kind, **{k: _jsonable(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.accelerator is not None and self.accelerator.trackers:
            numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}
            self.accelerator.log(numeric, step=metrics["step"])

    def write_samples(self, samples: list[dict[str, Any]]) -> None:
        if not self.write:
            return
        with self.samples_path.open("a") as f:
            for sample in samples:
                f.write(json.dumps(sample) + "\n")

    def write_generations(self, step: int, records: list[dict[str, Any]]) -> None:
        if not self.write:
            return
        path = self.run_dir / "eval" / f"generations-step-{step:06d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")


def _keep_lines_up_to(path: Path, step: int) -> None:
    """Rewrite ``path`` keeping the records with ``step <= step`` (all of them gone when step is 0).

    A last line that is not a JSON record (a write cut off by a kill) is dropped with a warning naming
    the file and line; a damaged line before the last is an error naming them (the file is left as it
    is). The rewrite goes through a temporary file in the same folder, fsynced and renamed into place,
    so a kill cannot lose the file; a file with nothing to drop is left untouched."""
    if not path.exists():
        return
    # bytes that are not UTF-8 (a torn write) are kept as they are: surrogateescape round-trips them
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    lines = text.splitlines()
    kept = []
    for number, line in enumerate(lines if step else [], start=1):  # step 0: everything goes
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            if any(rest.strip() for rest in lines[number:]):
                raise ValueError(f"{path}, line {number}: not a JSON record ({error}); the lines after it are "
                                 "intact, so this is not an interrupted write: repair or remove the line") from None
            logger.warning("%s, line %d: dropped an unfinished record (a write cut off when the run stopped)", path, number)
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    if kept == lines and text.endswith("\n"):
        return
    replace_durably(path, "".join(line + "\n" for line in kept).encode("utf-8", errors="surrogateescape"))


def read_metrics(path: Path, kind: str | None = "train") -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` of one ``kind`` (``train``, ``eval``; None: all)."""
    return [r for r in read_jsonl(path) if kind is None or r.get("kind") == kind]


class StepProgress:
    """A rich progress bar over training steps, with evaluation as its own bar, plus summary lines."""

    SUMMARY_KEYS = (
        ("loss", "loss"),
        ("reward/mean", "reward"),
        ("accuracy/rollout", "acc"),
        ("entropy/rollout", "H_roll"),
        ("entropy/demo", "H_demo"),
        ("grad_norm", "|g|"),
        ("time/step", "s/step"),
    )

    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        method: str = "",
        log_every: int = 1,
        console: Console | None = None,
        method_keys: tuple[tuple[str, str], ...] = (),
        enabled: bool = True,
    ):
        """``method_keys``: the method's own (metric, label) pairs for the summary line; ``enabled=False``
        (every process of a run but rank 0) shows nothing."""
        self.enabled = enabled
        self.console = console or Console(stderr=True, log_path=False)
        self.summary_keys = self.SUMMARY_KEYS[:-2] + tuple(method_keys) + self.SUMMARY_KEYS[-2:]
        self.log_every = max(log_every, 1)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            disable=not enabled,
        )
        self.task = self.progress.add_task(f"train {method}", total=total_steps, completed=start_step, info="")

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        return False

    def summary(self, metrics: dict[str, Any]) -> str:
        parts = [f"{label}={metrics[key]:.3g}" for key, label in self.summary_keys if isinstance(metrics.get(key), (int, float))]
        return " ".join(parts)

    def step_done(self, metrics: dict[str, Any]) -> None:
        step = metrics["step"]
        self.progress.update(self.task, advance=1, info=f"loss={metrics.get('loss', float('nan')):.3g}")
        if self.enabled and step % self.log_every == 0:
            self.progress.console.log(f"step {step} [{metrics.get('plan', '')}] {self.summary(metrics)}")

    def start_eval(self, total: int, step: int):
        self.eval_left = total
        return self.progress.add_task(f"eval @ step {step}", total=total, info="")

    def advance_eval(self, task, count: int) -> None:
        count = min(count, self.eval_left)  # processes' shares differ by one at most; rank 0 reports for all
        self.eval_left -= count
        self.progress.update(task, advance=count)

    def finish_eval(self, task, result) -> None:
        self.progress.update(task, info=f"accuracy={result.accuracy:.3f}")
        if self.enabled:
            self.progress.console.log(
                f"eval: accuracy={result.accuracy:.3f} reward={result.mean_reward:.3f} "
                f"length={result.mean_length:.1f} truncated={result.truncated:.2f} (n={result.num_examples})"
            )
