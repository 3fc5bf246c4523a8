"""Held-out accuracy of a policy: greedy completions scored with the run's reward functions.

Each completion becomes a :class:`~hybridrft.eval.records.GenerationRecord` (as its JSON dict), the
record ``hybridrft eval`` writes too; the trainer writes them to ``RUN/eval/generations-step-N.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from hybridrft.data import Example
from hybridrft.eval.records import generation_record
from hybridrft.rewards import combine_rewards, extract_answer
from hybridrft.rollout import Sampler, SamplingParams


@dataclass
class EvalResult:
    accuracy: float  # share of problems whose reward reaches the correctness threshold
    mean_reward: float
    mean_length: float  # completion tokens
    truncated: float  # share of completions cut at max_new_tokens
    num_examples: int
    # one GenerationRecord.to_json() per problem: what the model was asked, what it wrote, its score
    records: list[dict] = field(default_factory=list)

    @classmethod
    def from_records(cls, records: list[dict]) -> "EvalResult":
        """The summary of per-problem records (for example gathered from the shards of several processes)."""
        n = max(len(records), 1)
        return cls(
            accuracy=sum(r["correct"] for r in records) / n,
            mean_reward=sum(r["score"] for r in records) / n,
            mean_length=sum(r["tokens"] for r in records) / n,
            truncated=sum(r["truncated"] for r in records) / n,
            num_examples=len(records),
            records=list(records),
        )

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        return {
            f"{prefix}/accuracy": self.accuracy,
            f"{prefix}/mean_reward": self.mean_reward,
            f"{prefix}/response_length": self.mean_length,
            f"{prefix}/truncated": self.truncated,
        }


def evaluate(
    sampler: Sampler,
    examples: list[Example],
    prompt_ids: list[list[int]],
    reward_fns: list[tuple[str, Callable, float]],
    *,
    max_new_tokens: int,
    batch_size: int = 64,
    correct_threshold: float = 1.0,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Greedy-decode every prompt once and score it; ``on_batch(k)`` reports progress."""
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    records = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        completions = sampler.generate(prompt_ids[start : start + batch_size], params)
        texts = [c.text for c in completions]
        rewards, _ = combine_rewards(
            reward_fns,
            [e.prompt for e in chunk],
            texts,
            [e.answer for e in chunk],
        )
        for example, completion, reward in zip(chunk, completions, rewards):
            record = generation_record(
                example, 0, completion, reward, extract_answer(completion.text), correct_threshold=correct_threshold
            )
            records.append(record.to_json())
        if on_batch is not None:
            on_batch(len(chunk))
    return EvalResult.from_records(records)


def evaluate_sharded(
    sampler,
    examples: list[Example],
    prompt_ids: list[list[int]],
    reward_fns: list[tuple[str, Callable, float]],
    *,
    rank: int,
    count: int,
    gather: Callable[[object], list],
    on_batch: Callable[[int], None] | None = None,
    **settings,
) -> EvalResult:
    """``evaluate`` split over ``count`` processes: this one (``rank``) takes problems rank, rank +
    count, ...; ``gather`` (every process's value, in rank order) brings the records back in problem
    order. ``on_batch`` hears this process's progress scaled to the whole set."""
    mine = list(range(rank, len(examples), count))
    result = evaluate(
        sampler, [examples[i] for i in mine], [prompt_ids[i] for i in mine], reward_fns,
        on_batch=None if on_batch is None else (lambda k: on_batch(k * count)), **settings,
    )
    indexed = sorted((pair for share in gather(list(zip(mine, result.records))) for pair in share), key=lambda p: p[0])
    return EvalResult.from_records([record for _, record in indexed])
