"""``RolloutBatch``: every sequence a training step learns from, rollouts and demonstrations alike."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch


@dataclass
class RolloutBatch:
    """Right-padded ``prompt + completion`` sequences with their per-sequence training signals.

    ``loss_mask`` marks completion tokens only (including the EOS that ends a completion), in the
    coordinates of ``input_ids``: the log-prob at position ``t`` scores ``input_ids[:, t]``.
    """

    input_ids: torch.Tensor  # [N, T] long
    attention_mask: torch.Tensor  # [N, T] long
    loss_mask: torch.Tensor  # [N, T] bool
    is_demo: torch.Tensor  # [N] bool
    group: torch.Tensor  # [N] long, prompt index within the step
    reward: torch.Tensor  # [N] float
    truncated: torch.Tensor  # [N] bool: a rollout hit max_new_tokens without EOS
    advantage: torch.Tensor | None = None  # [N] float, set by the objective
    old_logp: torch.Tensor | None = None  # [N, T], when a batch is used for several updates
    ref_logp: torch.Tensor | None = None  # [N, T], reference policy (KL penalty, KL diagnostic)
    teacher_logp: torch.Tensor | None = None  # [N, T], the distillation teacher's log-prob of each token
    # [N, T], the sampler's log-prob of each rollout token (0 elsewhere), when the sampler records them:
    # the training-inference mismatch is measured and optionally corrected against it
    sampler_logp: torch.Tensor | None = None
    # written by the objective's prepare(), read by its loss(): named token masks [N, T] bool and
    # named per-sequence coefficients [N]; both are sliced with the rows like every other field
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    coefficients: dict[str, torch.Tensor] = field(default_factory=dict)
    # rollouts that continue a demonstration prefix (Prefix-RFT), set when the step planned prefixes:
    # the prefix tokens [N, T] bool (part of the completion, not sampled), each row's prefix id [N] long
    # (-1: none; rollouts of one prompt with one id share their prefix) and each prefix token's
    # 1-based position over its demonstration's length [N, T] (0 elsewhere)
    prefix_mask: torch.Tensor | None = None
    prefix_id: torch.Tensor | None = None
    prefix_position: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def completion_lengths(self) -> torch.Tensor:
        return self.loss_mask.sum(-1)

    @property
    def sequence_lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(-1)

    def select(self, index: torch.Tensor | list[int]) -> "RolloutBatch":
        """Rows ``index``, with trailing all-padding columns dropped."""
        index = torch.as_tensor(index, dtype=torch.long)
        width = int(self.attention_mask[index].sum(-1).max()) if len(index) else 0

        def rows(value: torch.Tensor, per_token: bool) -> torch.Tensor:
            value = value[index.to(value.device)]
            return value[:, :width] if per_token else value

        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                out[f.name] = None
            elif f.name in ("masks", "coefficients"):
                out[f.name] = {name: rows(v, f.name == "masks") for name, v in value.items()}
            else:
                out[f.name] = rows(value, f.name in PER_TOKEN_FIELDS)
        return RolloutBatch(**out)

    def to(self, device) -> "RolloutBatch":
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                moved[f.name] = {name: v.to(device) for name, v in value.items()}
            elif value is not None:
                moved[f.name] = value.to(device)
        return replace(self, **moved)


PER_TOKEN_FIELDS = ("input_ids", "attention_mask", "loss_mask", "old_logp", "ref_logp", "teacher_logp", "sampler_logp", "prefix_mask",
                    "prefix_position")


def length_sorted_micro_batches(lengths: torch.Tensor, micro_batch_size: int) -> list[list[int]]:
    """Index lists of at most ``micro_batch_size`` rows, grouped by similar length to cut padding."""
    order = torch.argsort(lengths, descending=True, stable=True).tolist()
    return [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]


def update_parts(group: torch.Tensor, parts: int) -> list[list[int]]:
    """Rows of each of ``parts`` optimizer updates: the prompt groups dealt out in turn (group ``g``
    goes to update ``g mod parts``). Dealt, not cut in blocks, so that when every process holds a
    multiple of ``parts`` groups, the processes' updates together are the one-process updates."""
    if parts == 1:
        return [list(range(len(group)))]
    groups = group.unique().tolist()
    return [torch.isin(group, torch.tensor(groups[j::parts])).nonzero().squeeze(-1).tolist() for j in range(parts) if groups[j::parts]]


def group_micro_batches(group: torch.Tensor, lengths: torch.Tensor, micro_batch_size: int) -> list[list[int]]:
    """Index lists of at most ``micro_batch_size`` rows made of whole groups where they fit.

    For the shared-prompt forward, which runs each group's prompt once per micro-batch: groups
    (longest first) are packed together while they fit, and a group larger than the micro-batch
    is split into length-sorted pieces.
    """
    members: dict[int, list[int]] = {}
    for row in torch.argsort(lengths, descending=True, stable=True).tolist():
        members.setdefault(int(group[row]), []).append(row)
    batches: list[list[int]] = []
    current: list[int] = []
    for rows in members.values():  # ordered by each group's longest row
        pieces = [rows[i : i + micro_batch_size] for i in range(0, len(rows), micro_batch_size)]
        for piece in pieces:
            if current and len(current) + len(piece) > micro_batch_size:
                batches.append(current)
                current = []
            current = current + piece
    if current:
        batches.append(current)
    return batches


def pad_right(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [N, T], attention_mask [N, T])`` for ragged token lists."""
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def build_rollout_batch(
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    *,
    is_demo: list[bool],
    group: list[int],
    reward: list[float],
    truncated: list[bool],
    pad_id: int,
    sampler_logprobs: list[list[float] | None] | None = None,
    prefixes: list[tuple[int, int, int]] | None = None,
) -> RolloutBatch:
    """Join each prompt with its completion and mark the completion tokens for the loss.

    ``sampler_logprobs`` gives each completion's per-token log-probs under the sampler (None for a
    demonstration); the batch carries them only when every rollout has them. ``prefixes`` gives each
    sequence's ``(prefix id, prefix tokens, demonstration tokens)`` when the step planned prefixes: the
    first ``prefix tokens`` of its completion came from a demonstration of that length."""
    rows = [p + c for p, c in zip(prompt_ids, completion_ids)]
    input_ids, attention_mask = pad_right(rows, pad_id)
    loss_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        loss_mask[i, len(p) : len(p) + len(c)] = True
    sampler_logp = None
    rollouts = [i for i, demo in enumerate(is_demo) if not demo]
    if sampler_logprobs is not None and rollouts and all(sampler_logprobs[i] is not None for i in rollouts):
        sampler_logp = torch.zeros(input_ids.shape, dtype=torch.float32)
        for i in rollouts:
            start = len(prompt_ids[i])
            sampler_logp[i, start : start + len(completion_ids[i])] = torch.tensor(sampler_logprobs[i], dtype=torch.float32)
    batch = RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        loss_mask=loss_mask,
        is_demo=torch.tensor(is_demo, dtype=torch.bool),
        group=torch.tensor(group, dtype=torch.long),
        reward=torch.tensor(reward, dtype=torch.float32),
        truncated=torch.tensor(truncated, dtype=torch.bool),
        sampler_logp=sampler_logp,
    )
    if prefixes is not None:
        batch.prefix_mask = torch.zeros_like(loss_mask)
        batch.prefix_position = torch.zeros(input_ids.shape, dtype=torch.float32)
        for i, (p, (_, length, demo_length)) in enumerate(zip(prompt_ids, prefixes)):
            batch.prefix_mask[i, len(p) : len(p) + length] = True
            batch.prefix_position[i, len(p) : len(p) + length] = torch.arange(1, length + 1) / max(demo_length, 1)
        batch.prefix_id = torch.tensor([prefix_id for prefix_id, _, _ in prefixes], dtype=torch.long)
    return batch
