"""One record of a generation: what the model was asked, what it wrote, and how that scored.

Training-time evaluation (``RUN/eval/generations-step-N.jsonl``) and ``hybridrft eval``
(``OUTPUT/generations/<benchmark>.jsonl``) write the same record, one JSON object per line, every
key always present (``null`` where it does not apply):

``id``, ``sample`` (0-based, per problem), ``prompt`` (the problem as the data gave it: text or chat
messages, before the chat template), ``answer`` (gold), ``completion``, ``extracted`` (the final
answer the completion states, or null), ``score`` (the reward: the run's reward functions in
training, the math or choice reward in ``hybridrft eval``), ``correct`` (``score >= threshold``),
``tokens`` (completion tokens, EOS included), ``truncated`` (cut at the token budget), ``finished``
(ended with EOS), ``choices`` and ``permutation`` (multiple choice: the options as shown, and the
source index of each), ``settings`` (``hybridrft eval``'s generation settings; null in training,
whose ``config.yaml`` holds them).

Files of earlier versions are read too: training-time files then had ``reward`` and ``length`` for
``score`` and ``tokens``, and no prompt, sample, extracted or finished.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from hybridrft.data import Example

logger = logging.getLogger(__name__)

# old training-time field name -> the record's name
_RENAMED = {"reward": "score", "length": "tokens"}


class GenerationFileError(ValueError):
    """A generations file with a line that is not a record; the message names the file and line."""


@dataclass
class GenerationRecord:
    id: str
    sample: int
    prompt: str | list[dict[str, str]] | None
    answer: str
    completion: str
    extracted: str | None
    score: float
    correct: bool
    tokens: int
    truncated: bool
    finished: bool | None
    choices: list[str] | None = None
    permutation: list[int] | None = None
    settings: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with every field (the line written to a generations file)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "record") -> "GenerationRecord":
        """A record from a line of a generations file, this version's or an earlier one's
        (``reward`` / ``length`` of old training-time files read as ``score`` / ``tokens``).
        A missing ``completion``, ``score`` or ``correct`` is an error naming ``where``."""
        data = {_RENAMED.get(key, key): value for key, value in data.items()}
        missing = [name for name in ("id", "completion", "score", "correct") if name not in data]
        if missing:
            raise GenerationFileError(f"{where}: not a generation record (no {', '.join(missing)})")
        completion = data["completion"]
        return cls(
            id=str(data["id"]),
            sample=int(data.get("sample") or 0),
            prompt=data.get("prompt"),
            answer=str(data.get("answer", "")),
            completion=completion,
            extracted=data.get("extracted"),
            score=float(data["score"]),
            correct=bool(data["correct"]),
            tokens=int(data.get("tokens") or 0),
            truncated=bool(data.get("truncated", False)),
            finished=data.get("finished"),
            choices=data.get("choices"),
            permutation=data.get("permutation"),
            settings=data.get("settings"),
        )


RECORD_KEYS = tuple(f.name for f in fields(GenerationRecord))


def generation_record(
    example: Example,
    sample: int,
    completion,
    score: float,
    extracted: str | None,
    *,
    correct_threshold: float,
    settings: dict[str, Any] | None = None,
) -> GenerationRecord:
    """The record of ``completion`` (a ``rollout.Completion``), sample ``sample`` of ``example``."""
    prompt = example.prompt if isinstance(example.prompt, str) else [dict(m) for m in example.prompt]
    return GenerationRecord(
        id=example.id,
        sample=sample,
        prompt=prompt,
        answer=example.answer,
        completion=completion.text,
        extracted=extracted,
        score=score,
        correct=score >= correct_threshold,
        tokens=len(completion.token_ids),
        truncated=completion.truncated,
        finished=completion.finished,
        choices=list(example.meta["choices"]) if "permutation" in example.meta else None,
        permutation=list(example.meta["permutation"]) if "permutation" in example.meta else None,
        settings=settings,
    )


def read_records(path: str | Path, *, repair: bool = False, partial_last_line: bool = True) -> list[dict[str, Any]]:
    """Every JSON object of a JSONL file (generations, or any file of objects), as dicts.

    A kill can leave the last line without its newline and cut short; with ``partial_last_line``
    such a line is skipped with a warning, and with ``repair=True`` it is also cut off the file (or,
    when it is complete JSON, given its newline back), so the lines appended next start on a line of
    their own. Any other line that is not a JSON object is a :class:`GenerationFileError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1  # everything up to and including the last newline
    records: list[dict[str, Any]] = []
    lines = data[:complete].split(b"\n")[:-1]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _parse(line)
        if record is None:
            raise GenerationFileError(f"{path}, line {number}: not a JSON object")
        records.append(record)
    tail = data[complete:]
    if tail.strip():
        record = _parse(tail)
        if record is not None:
            records.append(record)
            if repair:
                with path.open("ab") as handle:
                    handle.write(b"\n")
        elif not partial_last_line:
            raise GenerationFileError(f"{path}, line {len(lines) + 1}: not a JSON object")
        else:
            logger.warning("%s: ignoring a half-written last line (%d bytes)", path, len(tail))
            if repair:
                with path.open("r+b") as handle:
                    handle.truncate(complete)
    return records


def read_generation_records(path: str | Path) -> list[GenerationRecord]:
    """The records of a generations file of either writer, of this version or an earlier one."""
    return [GenerationRecord.from_json(r, f"{path}, record {n}") for n, r in enumerate(read_records(path), start=1)]


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
