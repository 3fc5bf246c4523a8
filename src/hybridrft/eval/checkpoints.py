"""Which model folder to evaluate when given a run folder or a checkpoint folder."""

from __future__ import annotations

import re
from pathlib import Path

_STEP = re.compile(r"^step-(\d+)$")


def resolve_model_dir(name_or_path: str) -> str:
    """A loadable model for ``name_or_path``; hub ids and embedded names pass through unchanged.

    A local folder with a ``config.json`` is a model. Otherwise, in order: its ``model/``
    subfolder (a checkpoint folder such as ``runs/x/checkpoints/step-000010``), its
    ``final_model/`` (a finished run folder), the newest ``checkpoints/step-*/model`` (a run that
    has not finished). Anything else is returned as given, for the model loader to report.
    """
    path = Path(name_or_path).expanduser()
    if not path.is_dir() or (path / "config.json").is_file():
        return name_or_path
    for candidate in (path / "model", path / "final_model"):
        if (candidate / "config.json").is_file():
            return str(candidate)
    steps = []
    for child in (path / "checkpoints").glob("step-*"):
        match = _STEP.match(child.name)
        if match and (child / "model" / "config.json").is_file():
            steps.append((int(match.group(1)), child / "model"))
    if steps:
        return str(max(steps)[1])
    return name_or_path
