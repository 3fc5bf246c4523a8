"""The run's processes, as the trainer needs them: one on a laptop, several under ``accelerate launch``.

Every quantity a loss or a decision depends on is made global here (token and sequence counts,
entropy sums, the finite check), and every value a process holds alone is gathered here, so the
trainer reads the same with one process or many. With one process nothing is communicated.
"""

from __future__ import annotations

from typing import Any

import torch

from hybridrft.ops import MaskTotals


class Processes:
    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.count = accelerator.num_processes
        self.rank = accelerator.process_index
        self.is_main = accelerator.is_main_process

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over processes (float64, so counts stay exact)."""
        if self.count == 1:
            return [float(v) for v in values]
        local = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return self.accelerator.reduce(local, reduction="sum").tolist()

    def mask_totals(self, mask: torch.Tensor) -> MaskTotals:
        local = MaskTotals.of(mask)
        return MaskTotals(*self.sum([local.num_tokens, local.num_seqs]))

    def all_true(self, flag: bool) -> bool:
        """One answer for every process: whether ``flag`` holds on all of them."""
        return self.sum([0.0 if flag else 1.0])[0] == 0.0

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (any picklable object), in rank order, on every process."""
        if self.count == 1:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    def check_same(self, value: Any, what: str) -> None:
        """Fail loudly if the processes disagree on ``value`` (a decision that must be global)."""
        values = self.gather(value)
        if any(v != values[0] for v in values):
            raise RuntimeError(f"the processes disagree on {what}: {values}")

    def wait(self) -> None:
        if self.count > 1:
            self.accelerator.wait_for_everyone()
