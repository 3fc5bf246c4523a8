"""The order in which a run visits its training prompts, and each process's share of a step.

A step takes the next ``prompts_per_step`` prompts of the run's global order (a seeded permutation
of the training set, a fresh one each epoch). Under data parallelism that global batch is split
into equal contiguous shares, one per process, and every prompt carries its position in the global
batch and its own sampling seed, derived from the run's seed, the step and that position only. So a
step's prompts and rollouts are the same whether one process or eight take them, and a run resumed
under another process count continues the same stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SEED_MODULUS = 2**63 - 1


def prompt_seed(seed: int, step: int, position: int) -> int:
    """The sampling seed of the prompt at ``position`` of step ``step``'s global batch."""
    return ((seed * 1_000_003 + step) * 1_000_033 + position) % SEED_MODULUS


@dataclass(frozen=True)
class PromptShare:
    """One process's prompts of a step: dataset indices, positions in the global batch, seeds."""

    indices: list[int]
    positions: list[int]
    seeds: list[int]

    def __len__(self) -> int:
        return len(self.indices)


class PromptStream:
    """The run's stream of training prompts; ``cursor`` (prompts consumed so far) is all its state."""

    def __init__(self, size: int, seed: int, *, rank: int = 0, world_size: int = 1, cursor: int = 0):
        if size <= 0:
            raise ValueError("the prompt stream needs at least one training example")
        self.size, self.seed = size, seed
        self.rank, self.world_size = rank, world_size
        self.cursor = cursor
        self._order: list[int] = []
        self._order_epoch: int | None = None

    def epoch_order(self, epoch: int) -> list[int]:
        """The order in which epoch ``epoch`` visits the training set: a seeded permutation."""
        if self._order_epoch != epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._order, self._order_epoch = torch.randperm(self.size, generator=generator).tolist(), epoch
        return self._order

    def global_batch(self, count: int) -> list[int]:
        """Dataset indices of the next ``count`` prompts of the global order (advances the cursor)."""
        out = []
        for position in range(self.cursor, self.cursor + count):
            epoch, offset = divmod(position, self.size)
            out.append(self.epoch_order(epoch)[offset])
        self.cursor += count
        return out

    def next_share(self, step: int, prompts_per_step: int) -> PromptShare:
        """This process's share of step ``step``: its contiguous part of the global batch."""
        if prompts_per_step % self.world_size:
            raise ValueError(
                f"train.prompts_per_step={prompts_per_step} is the global batch and must divide evenly "
                f"among the {self.world_size} processes"
            )
        everyone = self.global_batch(prompts_per_step)
        per_process = prompts_per_step // self.world_size
        positions = list(range(self.rank * per_process, (self.rank + 1) * per_process))
        return PromptShare(
            indices=[everyone[p] for p in positions],
            positions=positions,
            seeds=[prompt_seed(self.seed, step, p) for p in positions],
        )


def check_process_shares(prompts_per_step: int, updates_per_batch: int, processes: int) -> None:
    """Every process must hold an equal share of the global batch, and with several updates per
    step, a share that splits into the same updates as on one process (see ``rollout.update_parts``)."""
    if prompts_per_step % processes:
        raise ValueError(f"train.prompts_per_step={prompts_per_step} must divide evenly among {processes} processes")
    if processes > 1 and (prompts_per_step // processes) % updates_per_batch:
        raise ValueError(
            f"train.updates_per_batch={updates_per_batch} must divide each process's {prompts_per_step // processes} "
            "prompts, so that every update holds the same prompts as on one process"
        )
