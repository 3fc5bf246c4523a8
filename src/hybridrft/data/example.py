"""The record every layer above `data` consumes: a prompt, its demonstrations, a gold answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_FIELD_NAMES = ("id", "prompt", "demonstrations", "answer", "meta")


@dataclass
class Example:
    """One training or evaluation problem.

    `prompt` is plain text or a list of chat messages (`{"role": ..., "content": ...}`); chat
    rendering (see `hybridrft.data.chat`) turns either into model input. `demonstrations` are
    step-by-step solutions that end with the answer in `\\boxed{}`, so a demonstration can be scored
    by the same reward as a rollout. `answer` is the gold final answer as text.
    """

    id: str
    prompt: str | list[dict[str, str]]
    demonstrations: list[str]
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A bare string here would later be iterated character by character as "demonstrations".
        if isinstance(self.demonstrations, str):
            raise TypeError(
                f"Example {self.id!r}: demonstrations must be a list of strings, not a string"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; copies the containers so the caller may modify the result freely."""
        prompt = self.prompt if isinstance(self.prompt, str) else [dict(m) for m in self.prompt]
        return {
            "id": self.id,
            "prompt": prompt,
            "demonstrations": list(self.demonstrations),
            "answer": self.answer,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Example:
        """Inverse of `to_dict`. `demonstrations` and `meta` may be absent; unknown keys are an
        error, so a misspelt field is not silently lost."""
        unknown = sorted(set(data) - set(_FIELD_NAMES))
        if unknown:
            raise ValueError(f"unknown Example field(s) {unknown}; expected {list(_FIELD_NAMES)}")
        missing = [name for name in ("id", "prompt", "answer") if name not in data]
        if missing:
            raise ValueError(f"Example dict is missing field(s) {missing}")
        prompt = data["prompt"]
        return cls(
            id=str(data["id"]),
            prompt=prompt if isinstance(prompt, str) else [dict(m) for m in prompt],
            demonstrations=list(data.get("demonstrations") or []),
            answer=str(data["answer"]),
            meta=dict(data.get("meta") or {}),
        )
