"""Read a run folder (``config.yaml``, ``metrics.jsonl``) into plain Python data for plots and reports.

The report layer sits below ``train``, so it reads the files itself instead of using the trainer's
logger: ``metrics.jsonl`` holds one JSON object per line, ``"kind": "train"`` per step and
``"kind": "eval"`` per held-out evaluation. Non-finite numbers are stored as strings (``"nan"``) and
are skipped here.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)


class RunFolderError(ValueError):
    """A folder that is not a run folder (no ``metrics.jsonl``), or one whose files cannot be read."""


def read_jsonl(path: str | Path, *, partial_last_line: bool = False) -> list[dict[str, Any]]:
    """Every JSON object of a JSONL file; a bad line is an error that names the file and the line.

    With ``partial_last_line``, an unfinished last line (a run still writing) is skipped instead.
    """
    path = Path(path)
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if partial_last_line and number == len(lines):
                logger.warning("%s: skipped the unfinished last line %d", path, number)
                continue
            raise RunFolderError(f"{path} line {number} is not valid JSON: {err.msg}") from None
        if not isinstance(record, dict):
            raise RunFolderError(f"{path} line {number} is not a JSON object")
        records.append(record)
    return records


def number(value: Any) -> float | None:
    """``value`` as a finite float, or None (strings such as ``"nan"``, None, lists...)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


@dataclass
class RunData:
    """One run folder: its resolved config (a plain dict) and its metric records."""

    path: Path
    config: dict[str, Any]
    train: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    label: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def method(self) -> str:
        return str(self.config.get("method") or "")

    def setting(self, dotted: str, default: Any = None) -> Any:
        """A config value by dotted key (``train.learning_rate``), ``default`` when absent."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """``(steps, values)`` of a metric over the train and eval records that carry a finite value."""
        points = []
        for record in (*self.train, *self.evals):
            value = number(record.get(key))
            if value is not None and isinstance(record.get("step"), int):
                points.append((record["step"], value))
        points.sort(key=lambda p: p[0])
        return [p[0] for p in points], [p[1] for p in points]

    def keys(self) -> set[str]:
        found: set[str] = set()
        for record in (*self.train, *self.evals):
            found.update(k for k, v in record.items() if number(v) is not None)
        return found

    @property
    def steps_done(self) -> int:
        return max((r["step"] for r in self.train if isinstance(r.get("step"), int)), default=0)


def load_run(path: str | Path) -> RunData:
    """Read ``path/metrics.jsonl`` (required) and ``path/config.yaml`` (optional)."""
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"run folder not found: {path}")
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise RunFolderError(f"{path} is not a run folder: it has no metrics.jsonl")
    records = read_jsonl(metrics, partial_last_line=True)
    config: dict[str, Any] = {}
    config_path = path / "config.yaml"
    if config_path.is_file():
        try:
            loaded = yaml.safe_load(config_path.read_text())
        except yaml.YAMLError as err:
            raise RunFolderError(f"{config_path} is not valid YAML: {err}") from None
        config = loaded if isinstance(loaded, dict) else {}
    return RunData(
        path=path,
        config=config,
        train=[r for r in records if r.get("kind", "train") == "train"],
        evals=[r for r in records if r.get("kind") == "eval"],
    )


def load_runs(paths: list[str | Path]) -> list[RunData]:
    """Load several runs and give each a unique legend label: the folder name, plus the method when
    the name does not already say it, plus the parent folder when two runs share a name."""
    runs = [load_run(p) for p in paths]
    names = [run.name for run in runs]
    for run in runs:
        label = run.name
        if names.count(run.name) > 1:
            label = f"{run.path.resolve().parent.name}/{run.name}"
        if run.method and run.method not in run.name:
            label = f"{label} ({run.method})"
        run.label = label
    seen: dict[str, int] = {}
    for run in runs:  # the same folder twice: number the copies
        seen[run.label] = seen.get(run.label, 0) + 1
        if seen[run.label] > 1:
            run.label = f"{run.label} #{seen[run.label]}"
    return runs
