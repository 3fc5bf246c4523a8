"""The Trainer: one loop for every method, read top to bottom in ``training_step``.

    plan -> rollouts -> rewards -> RolloutBatch -> objective.prepare_batch (advantages, masks)
         -> [old / reference log-probs, once] -> for each update: micro-batched loss/backward,
            pre-clip gradient norm, clip, AdamW (skipped if not finite)
         -> LR schedule -> objective.after_step -> metrics

The objective decides what a step needs and what its loss is; the Trainer does everything else:
sampling, scoring, batching, normalisation across micro-batches (and processes), optimisation,
evaluation, checkpoints and logging. It runs as one process on CPU and under ``accelerate launch``
on GPUs.
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from hybridrft.config import Config, config_to_yaml
from hybridrft.data import Example, load_run_examples
from hybridrft.eval import EvalResult, evaluate
from hybridrft.models import load_policy, load_tokenizer, load_training_policy, save_policy
from hybridrft.objectives import SFT, BatchTotals, PolicyOutputs, StepPlan, build_objective
from hybridrft.models.kv_cache import allow_checkpointed_cache
from hybridrft.ops import MaskTotals, shared_prompt_logprobs_and_entropy, token_logprobs_and_entropy
from hybridrft.rewards import combine_rewards, get_reward, reward_counters
from hybridrft.rollout import (
    RolloutBatch,
    SamplingParams,
    build_rollout_batch,
    build_sampler,
    encode_prompts,
    group_micro_batches,
    length_sorted_micro_batches,
)
from hybridrft.train.checkpoint import (
    CheckpointError,
    checkpoint_problems,
    latest_complete_checkpoint,
    list_checkpoints,
    load_training_state,
    pause_point,
    remove_partial_checkpoints,
    save_checkpoint,
)
from hybridrft.train.logging import MetricsLogger, StepProgress
from hybridrft.train.memory import return_freed_blocks_at_once

logger = logging.getLogger(__name__)

@dataclass
class PromptSet:
    """Examples together with their prompts as token ids (rendered with the chat template)."""

    examples: list[Example]
    prompt_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.examples)


class NonFiniteTrainingError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient (``train.max_bad_steps``)."""


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    evals: dict[int, EvalResult] = field(default_factory=dict)  # step -> held-out result
    final_model: Path | None = None


def _synchronized_clock(device: torch.device) -> float:
    """``perf_counter`` after the device's queued work is done (GPU kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _mean_over_updates(per_update: list[dict[str, float]]) -> dict[str, float]:
    """A step's metrics from its updates: the mean of each (time: the sum; extremes: the extreme)."""
    out: dict[str, float] = {}
    for name in {name for update in per_update for name in update}:
        values = [update[name] for update in per_update if name in update]
        if name.startswith("time/"):
            out[name] = sum(values)
        elif name.endswith("_min"):
            out[name] = min(values)
        else:
            out[name] = sum(values) / len(values)
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Train ``config.model`` with ``config.method``; drive it from Python or ``hybridrft train``.

    ``model``, ``tokenizer``, ``train_examples``, ``eval_examples`` and ``reward_fns`` may be passed in
    to bypass loading them from the config (for example a model built in memory).
    """

    def __init__(
        self,
        config: Config,
        *,
        model=None,
        tokenizer=None,
        train_examples: list[Example] | None = None,
        eval_examples: list[Example] | None = None,
        reward_fns: list[tuple[str, Callable, float]] | None = None,
    ):
        from accelerate import Accelerator

        self.config = config
        cfg = config.train
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)
        self.output_dir = Path(cfg.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.accelerator = Accelerator(log_with=cfg.report_to or None, project_dir=str(self.output_dir))

        existing = list_checkpoints(self.checkpoint_dir)
        resume_from = None
        if existing and not cfg.resume and not cfg.overwrite:
            raise FileExistsError(
                f"{self.output_dir} already holds a run ({existing[-1].name}); pass --resume to continue it, "
                "train.overwrite=true to start over in it, or choose another train.output_dir"
            )
        if cfg.resume:
            remove_partial_checkpoints(self.checkpoint_dir)  # left by a process killed while saving
            resume_from = latest_complete_checkpoint(self.checkpoint_dir)  # damaged ones are skipped, with a warning
            if resume_from is None and existing:
                problems = "; ".join(f"{p.name}: {', '.join(checkpoint_problems(p))}" for p in existing)
                raise CheckpointError(f"no complete checkpoint in {self.checkpoint_dir} to resume from ({problems})")
            if resume_from is None:
                logger.warning("train.resume is set but %s has no checkpoint; starting from step 0", self.checkpoint_dir)

        # model and tokenizer (a resumed run takes the weights of its checkpoint)
        self.tokenizer = tokenizer or load_tokenizer(config.model.name_or_path)
        model = load_training_policy(config.model, checkpoint=resume_from / "model" if resume_from else None, model=model)
        allow_checkpointed_cache(model)  # the shared-prompt forward's caches are safe to replay
        self.objective = build_objective(config)
        self.reference = None
        if self.objective.needs_reference:
            self.reference = load_policy(config.model.name_or_path, dtype=config.model.dtype).eval().requires_grad_(False)

        # data and rewards
        if train_examples is None:
            train_examples, loaded_eval = load_run_examples(config)
            eval_examples = loaded_eval if eval_examples is None else eval_examples
        self.train_set = self._encode(train_examples, "training data")
        self.eval_set = self._encode(eval_examples or [], "evaluation data")
        if len(self.train_set) == 0:
            raise ValueError(f"no usable training examples in {config.data.source}")
        self.reward_fns = reward_fns or [
            (name, get_reward(name), weight) for name, weight in zip(config.reward.functions, config.reward.weights)
        ]

        # optimisation
        from transformers import get_scheduler

        model.train()
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_eps,
            weight_decay=cfg.weight_decay,
            fused=True,  # one kernel per parameter: 0.17 s instead of 0.6 s per SmolLM2 step on 2 CPU cores
        )
        # the scheduler is stepped by us once per optimisation step (not handed to accelerate,
        # which would step it once per process)
        self.scheduler = get_scheduler(
            cfg.lr_scheduler, self.optimizer, num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=cfg.max_steps
        )
        self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        for param in self.model.parameters():  # allocated once, together, before any activation
            if param.requires_grad:
                param.grad = torch.zeros_like(param)
        if self.reference is not None:
            self.reference.to(self.accelerator.device)
        if config.model.gradient_checkpointing and self.accelerator.device.type == "cpu":
            return_freed_blocks_at_once()  # memory over speed, as checkpointing asks (train/memory.py)
        self.sampler = build_sampler(
            config.rollout.backend, self.policy, self.tokenizer, batch_size=config.rollout.generation_batch_size
        )

        self.step = 0
        self.data_cursor = 0  # prompts consumed so far; the order is a seeded permutation per epoch
        self._order: list[int] = []
        self._order_epoch: int | None = None
        self.evals: dict[int, EvalResult] = {}
        self.skipped_steps = 0  # steps skipped for a non-finite loss or gradient, in all
        self.bad_steps_in_a_row = 0
        if resume_from:
            state = load_training_state(resume_from, optimizer=self.optimizer, scheduler=self.scheduler)
            self.step = state["step"]
            self.data_cursor = state["data_cursor"]
            self.skipped_steps = state.get("skipped_steps", 0)
            self.bad_steps_in_a_row = state.get("bad_steps_in_a_row", 0)
            self.objective.load_state_dict(state["objective"])
            logger.info("resumed from %s at step %d", resume_from, self.step)
        self.metrics = MetricsLogger(self.output_dir, truncate_after=self.step, accelerator=self.accelerator)

    # ------------------------------------------------------------------ helpers

    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.model)

    def _encode(self, examples: list[Example], what: str) -> PromptSet:
        data = self.config.data
        kept, ids = encode_prompts(
            self.tokenizer,
            examples,
            system_prompt=data.system_prompt,
            answer_instruction=data.answer_instruction,
            max_prompt_tokens=data.max_prompt_tokens,
            source=f"{what} ({data.source})",
        )
        return PromptSet(kept, ids)

    def _next_prompts(self, count: int) -> list[int]:
        """Indices of the next ``count`` training prompts: a fresh seeded permutation each epoch."""
        size = len(self.train_set)
        out = []
        for position in range(self.data_cursor, self.data_cursor + count):
            epoch, offset = divmod(position, size)
            out.append(self.epoch_order(epoch)[offset])
        self.data_cursor += count
        return out

    def epoch_order(self, epoch: int) -> list[int]:
        """The order in which epoch ``epoch`` visits the training set: a seeded permutation of its indices."""
        if self._order_epoch != epoch:
            generator = torch.Generator().manual_seed(self.config.train.seed * 100_003 + epoch)
            self._order, self._order_epoch = torch.randperm(len(self.train_set), generator=generator).tolist(), epoch
        return self._order

    def _demonstration_ids(self, example: Example, count: int) -> tuple[list[list[int]], list[str], int]:
        """The first ``count`` demonstrations (cycled if fewer), tokenized, length-capped, and ended
        with the EOS the sampler stops on, so the policy learns to end a demonstration the way its
        own rollouts end (LUFFY's rollout code appends the tokenizer's EOS id the same way)."""
        if not example.demonstrations:
            raise ValueError(f"example {example.id} has no demonstration but the method trains on demonstrations")
        eos = self.sampler.stop_token_id
        limit = self.config.data.max_demo_tokens
        ids, texts, truncated = [], [], 0
        for j in range(count):
            text = example.demonstrations[j % len(example.demonstrations)]
            tokens = self.tokenizer(text, add_special_tokens=False).input_ids + [eos]
            if len(tokens) > limit:
                tokens, truncated = tokens[:limit], truncated + 1
            ids.append(tokens)
            texts.append(text)
        return ids, texts, truncated

    # ------------------------------------------------------------------ the step

    def training_step(self, step: int) -> dict[str, Any]:
        """One step: one generation batch, then one or more optimizer updates on it; returns its metrics."""
        cfg = self.config.train
        t_start = time.perf_counter()
        counts_before = reward_counters()  # process-wide counters: the step logs its own share
        plan, batch, metrics = self.collect(step)
        t_train = time.perf_counter()
        self._set_learning_rate(plan)
        updates = cfg.updates_per_batch * cfg.epochs_per_batch
        if updates > 1 and plan.kind != SFT:  # the behaviour policy of every later update's ratio
            batch.old_logp = self._logprobs(batch, self.model)
        if self.reference is not None:
            batch.ref_logp = self._logprobs(batch, self.reference)
        per_update = self.updates(batch, plan)
        metrics.update(_mean_over_updates(per_update))
        skipped = bool(metrics.pop("skipped"))
        if skipped:
            self._record_skipped_step(step, per_update[-1])
        else:
            self.bad_steps_in_a_row = 0
            self.scheduler.step()  # once per step, as verl steps its scheduler once per generation batch
            metrics.update(self.objective.after_step(step, plan, metrics["grad_norm"]))
        metrics.update({"train/skipped": float(skipped), "train/skipped_steps": self.skipped_steps})
        step_s = time.perf_counter() - t_start
        metrics["time/train"] = time.perf_counter() - t_train
        metrics["time/step"] = step_s
        metrics["throughput/tokens_per_s"] = metrics["tokens/trained"] * updates / step_s
        metrics.update({name: total - counts_before[name] for name, total in reward_counters().items()})
        return metrics

    def updates(self, batch: RolloutBatch, plan: StepPlan) -> list[dict[str, float]]:
        """The step's optimizer updates: ``epochs_per_batch`` passes over ``updates_per_batch`` parts
        of the batch. An update with a non-finite value is not taken, and neither is any after it."""
        cfg = self.config.train
        per_update: list[dict[str, float]] = []
        for _ in range(cfg.epochs_per_batch):
            for rows in self._update_batches(batch):
                metrics = self.compute_gradients(batch.select(rows), plan)
                metrics.update(self.optimizer_update(metrics["loss"]))
                per_update.append(metrics)
                if metrics["skipped"]:
                    return per_update
        return per_update

    def _record_skipped_step(self, step: int, bad_update: dict[str, float]) -> None:
        self.skipped_steps += 1
        self.bad_steps_in_a_row += 1
        logger.warning(
            "step %d skipped: non-finite loss (%s) or gradient norm (%s); the step's examples: %s",
            step, bad_update["loss"], bad_update["grad_norm"], ", ".join(self._step_example_ids),
        )

    def collect(self, step: int) -> tuple[StepPlan, RolloutBatch, dict[str, Any]]:
        """Steps 1-5 of a step: prompts, plan, rollouts and demonstrations, rewards, advantages."""
        cfg, rollout_cfg = self.config.train, self.config.rollout
        metrics: dict[str, Any] = {"step": step}

        # 1-2. prompts and the objective's plan for this step
        prompt_index = self._next_prompts(cfg.prompts_per_step)
        examples = [self.train_set.examples[i] for i in prompt_index]
        prompts = [self.train_set.prompt_ids[i] for i in prompt_index]
        self._step_example_ids = [example.id for example in examples]
        plan: StepPlan = self.objective.plan(step)
        metrics["plan"] = plan.kind
        metrics.update(plan.info)

        # 3. rollouts from the current policy (seeded per step: a resumed run samples the same)
        rows: list[tuple[int, list[int], str, bool, bool]] = []  # (group, ids, text, is_demo, truncated)
        t_gen = time.perf_counter()
        if plan.rollouts_per_prompt > 0:
            params = SamplingParams(
                n=plan.rollouts_per_prompt,
                temperature=rollout_cfg.temperature,
                top_p=rollout_cfg.top_p,
                max_new_tokens=rollout_cfg.max_new_tokens,
            )
            for c in self.sampler.generate(prompts, params, seed=cfg.seed * 1_000_003 + step):
                rows.append((c.prompt_index, c.token_ids, c.text, False, c.truncated))
        generate_s = time.perf_counter() - t_gen
        pause_point("sampling", step)  # test-only: a reliability test kills the process here
        generated_tokens = sum(len(r[1]) for r in rows)

        # ... and demonstrations, which enter the batch as completions of their prompt
        demo_truncated = 0
        for g, example in enumerate(examples):
            if plan.demos_per_prompt > 0:
                ids, texts, truncated = self._demonstration_ids(example, plan.demos_per_prompt)
                demo_truncated += truncated
                rows.extend((g, d, t, True, False) for d, t in zip(ids, texts))

        # 4. rewards for every completion, demonstrations included (they should earn full reward)
        t_reward = time.perf_counter()
        rewards, per_fn = combine_rewards(
            self.reward_fns,
            [examples[r[0]].prompt for r in rows],
            [r[2] for r in rows],
            [examples[r[0]].answer for r in rows],
        )
        reward_s = time.perf_counter() - t_reward

        # 5. one RolloutBatch; the objective derives advantages from it
        batch = build_rollout_batch(
            [prompts[r[0]] for r in rows],
            [r[1] for r in rows],
            is_demo=[r[3] for r in rows],
            group=[r[0] for r in rows],
            reward=rewards,
            truncated=[r[4] for r in rows],
            pad_id=self.tokenizer.pad_token_id,
        )
        metrics.update(self.objective.prepare_batch(batch, plan))
        metrics.update(self._batch_metrics(batch, per_fn, demo_truncated))
        metrics.update(
            {
                "time/generate": generate_s,
                "time/reward": reward_s,
                "throughput/generated_tokens_per_s": generated_tokens / generate_s if generated_tokens else 0.0,
                "tokens/trained": int(batch.attention_mask.sum()),
                "tokens/generated": generated_tokens,
            }
        )
        self._last_samples = [
            {"step": step, "group": r[0], "reward": rewards[k], "text": r[2]} for k, r in enumerate(rows) if not r[3]
        ][: cfg.log_samples]
        return plan, batch, metrics

    def compute_gradients(self, batch: RolloutBatch, plan: StepPlan) -> dict[str, float]:
        """Loss and backward of one update batch over length-sorted micro-batches, normalised by the
        update batch's totals: the accumulated gradients equal the gradient of the full-batch loss."""
        totals = BatchTotals({name: self._global_totals(mask) for name, mask in batch.masks.items()})
        micro_batches = self._micro_batches(batch)
        entropy_masks = self.objective.entropy_means_needed(plan)
        if entropy_masks:  # batch-granularity weights need the whole batch's entropy first
            totals.entropy_mean = self._batch_entropy_means(batch, micro_batches, entropy_masks, totals)

        device = self.accelerator.device
        scale = float(self.accelerator.num_processes)  # DDP averages gradients; our totals are global
        sums: dict[str, float] = {"loss": 0.0, "time/forward": 0.0, "time/backward": 0.0}
        for k, index in enumerate(micro_batches):
            micro = batch.select(index).to(device)
            last = k == len(micro_batches) - 1
            # gradients are all-reduced once per update, on the last micro-batch
            with nullcontext() if last else self.accelerator.no_sync(self.model):
                t_forward = time.perf_counter()
                out = self._forward(micro)
                loss, term_metrics = self.objective.step_loss(micro, out, totals, plan)
                loss_value = float(loss.detach())  # also waits for an accelerator, so the split below is honest
                t_backward = time.perf_counter()
                self.accelerator.backward(loss * scale)
            sums["time/forward"] += t_backward - t_forward
            sums["time/backward"] += _synchronized_clock(device) - t_backward
            sums["loss"] += loss_value
            for name, value in term_metrics.items():
                # metrics are contributions that add up over micro-batches, except extremes
                if name.endswith("_min"):
                    sums[name] = min(sums.get(name, math.inf), float(value))
                else:
                    sums[name] = sums.get(name, 0.0) + float(value)
        return sums

    def optimizer_update(self, loss: float = 0.0) -> dict[str, float]:
        """Record the pre-clip gradient norm, clip, take the AdamW step, zero the gradients.

        An update whose loss or gradient norm is not finite is not taken: the weights and the
        optimizer's state stay as they were (every process decides the same, on global values)."""
        t_start = time.perf_counter()
        grad_norm = self._clip_gradients()
        metrics = {"grad_norm": grad_norm, "lr": self.optimizer.param_groups[0]["lr"], "skipped": 0.0}
        if self._all_finite(loss, grad_norm):
            self.optimizer.step()
        else:
            metrics["skipped"] = 1.0
        # zeroed in place, not freed: gradient buffers reallocated every step among the backward's
        # temporaries fragment the heap (about 60 MB more peak memory for SmolLM2 on CPU)
        self.optimizer.zero_grad(set_to_none=False)
        metrics["time/optimizer"] = _synchronized_clock(self.accelerator.device) - t_start
        return metrics

    def _set_learning_rate(self, plan: StepPlan) -> None:
        """The step's base learning rate (a method may set one per phase) under the schedule, and
        the optimizer reset a phase switch asks for."""
        if plan.reset_optimizer:
            self.optimizer.state.clear()  # AdamW's moments start again, as in a new run
            logger.info("optimizer state reset before step %d", self.step)
        factors = getattr(self.scheduler, "lr_lambdas", None)  # every schedule of transformers' but one
        if factors is None:
            if plan.learning_rate is not None:
                raise ValueError(f"train.lr_scheduler={self.config.train.lr_scheduler} cannot take a learning rate per phase")
            return
        base = plan.learning_rate or self.config.train.learning_rate
        self.scheduler.base_lrs = [base] * len(self.scheduler.base_lrs)
        for group, factor in zip(self.optimizer.param_groups, factors):
            group["lr"] = base * factor(self.scheduler.last_epoch)

    def _update_batches(self, batch: RolloutBatch) -> list[list[int]]:
        """Rows of each optimizer update: the step's prompt groups in ``updates_per_batch`` equal parts."""
        parts = self.config.train.updates_per_batch
        if parts == 1:
            return [list(range(len(batch)))]
        groups = batch.group.unique().tolist()
        size = -(-len(groups) // parts)
        return [
            torch.isin(batch.group, torch.tensor(groups[i : i + size])).nonzero().squeeze(-1).tolist()
            for i in range(0, len(groups), size)
        ]

    @torch.no_grad()
    def _logprobs(self, batch: RolloutBatch, model) -> torch.Tensor:
        """``[N, T]`` log-probs of every token of ``batch`` under ``model`` (old or reference policy)."""
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
        for index in self._micro_batches(batch):
            micro = batch.select(index).to(self.accelerator.device)
            logp = self._forward(micro, model).logp
            out[torch.tensor(index)[:, None], torch.arange(logp.shape[1])] = logp.float().cpu()
        return out

    def _micro_batches(self, batch: RolloutBatch) -> list[list[int]]:
        size = self.config.train.micro_batch_size
        if self.config.train.shared_prompt_forward:
            return group_micro_batches(batch.group, batch.sequence_lengths, size)
        return length_sorted_micro_batches(batch.sequence_lengths, size)

    def _forward(self, micro: RolloutBatch, model=None) -> PolicyOutputs:
        model = self.model if model is None else model
        chunk = self.config.train.logprob_chunk_size
        # the distribution the rollouts were drawn from: logits / rollout.temperature
        temperature = self.config.rollout.temperature if self.config.rollout.temperature > 0 else 1.0
        if self.config.train.shared_prompt_forward:
            logp, entropy = shared_prompt_logprobs_and_entropy(
                model, micro.input_ids, micro.attention_mask, micro.loss_mask, micro.group,
                chunk_size=chunk, temperature=temperature,
            )
        else:
            logp, entropy = token_logprobs_and_entropy(
                model, micro.input_ids, micro.attention_mask, chunk_size=chunk, temperature=temperature
            )
        return PolicyOutputs(logp=logp, entropy=entropy)

    @torch.no_grad()
    def _batch_entropy_means(self, batch, micro_batches, names, totals) -> dict[str, float]:
        """Full-batch mean token entropy over the named masks (for batch-granularity weights)."""
        sums = {name: 0.0 for name in names}
        for index in micro_batches:
            micro = batch.select(index).to(self.accelerator.device)
            entropy = self._forward(micro).entropy
            for name in names:
                sums[name] += float((entropy * micro.masks[name]).sum())
        return {name: sums[name] / max(totals[name].num_tokens, 1.0) for name in names}

    def _all_finite(self, loss: float, grad_norm: float) -> bool:
        """Whether the loss and gradient norm are finite on every process (one answer for all)."""
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if self.accelerator.num_processes == 1:
            return finite
        flag = torch.tensor([0.0 if finite else 1.0], device=self.accelerator.device)
        return float(self.accelerator.reduce(flag, reduction="sum")) == 0.0

    def _global_totals(self, mask: torch.Tensor) -> MaskTotals:
        local = MaskTotals.of(mask)
        if self.accelerator.num_processes == 1:
            return local
        both = torch.tensor([local.num_tokens, local.num_seqs], device=self.accelerator.device)
        both = self.accelerator.reduce(both, reduction="sum")
        return MaskTotals(float(both[0]), float(both[1]))

    def _clip_gradients(self) -> float:
        max_norm = self.config.train.max_grad_norm
        params = [p for p in self.model.parameters() if p.grad is not None]
        if not params:
            return 0.0
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
        return float(norm)

    def _batch_metrics(self, batch: RolloutBatch, per_fn: dict[str, list[float]], demo_truncated: int) -> dict[str, float]:
        rollout, demo = ~batch.is_demo, batch.is_demo
        threshold = self.config.reward.correct_threshold
        out: dict[str, float] = {}
        if rollout.any():
            r = batch.reward[rollout]
            lengths = batch.completion_lengths[rollout].float()
            out.update(
                {
                    "reward/mean": float(r.mean()),
                    "reward/std": float(r.std()) if r.numel() > 1 else 0.0,
                    "accuracy/rollout": float((r >= threshold).float().mean()),
                    "length/response_mean": float(lengths.mean()),
                    "length/response_max": float(lengths.max()),
                    "length/truncated_frac": float(batch.truncated[rollout].float().mean()),
                }
            )
            for name, scores in per_fn.items():
                out[f"reward/{name}"] = float(torch.tensor(scores)[rollout].mean())
            if batch.advantage is not None:
                out["advantage/abs_mean"] = float(batch.advantage[rollout].abs().mean())
            # HPT's and LUFFY's diagnostic: groups whose rollouts all, or none, solved the prompt
            solved = torch.zeros(int(batch.group.max()) + 1).index_add_(0, batch.group[rollout], (r >= threshold).float())
            sizes = torch.zeros_like(solved).index_add_(0, batch.group[rollout], torch.ones_like(r))
            sampled = sizes > 0
            out["groups/all_correct"] = float((solved[sampled] == sizes[sampled]).float().mean())
            out["groups/none_correct"] = float((solved[sampled] == 0).float().mean())
        if demo.any():
            r = batch.reward[demo]
            out["reward/demo_mean"] = float(r.mean())
            out["data/demo_reward_mismatch"] = int((r < threshold).sum())
            out["data/demo_truncated"] = demo_truncated
            out["length/demo_mean"] = float(batch.completion_lengths[demo].float().mean())
        return out

    # ------------------------------------------------------------------ evaluation and the run

    def evaluate(self, on_batch: Callable[[int], None] | None = None) -> EvalResult:
        cfg = self.config
        return evaluate(
            self.sampler,
            self.eval_set.examples,
            self.eval_set.prompt_ids,
            self.reward_fns,
            max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
            batch_size=cfg.eval.batch_size,
            correct_threshold=cfg.reward.correct_threshold,
            on_batch=on_batch,
        )

    def _run_eval(self, progress: StepProgress) -> None:
        if not len(self.eval_set):
            return
        task = progress.start_eval(len(self.eval_set), self.step)
        result = self.evaluate(on_batch=lambda k: progress.advance_eval(task, k))
        progress.finish_eval(task, result)
        self.evals[self.step] = result
        self.metrics.log({"step": self.step, **result.metrics()}, kind="eval")
        self.metrics.write_generations(self.step, result.records)

    def save(self) -> Path:
        return save_checkpoint(
            self.checkpoint_dir,
            self.step,
            model=self.policy,
            tokenizer=self.tokenizer,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            trainer_state={
                "step": self.step,
                "data_cursor": self.data_cursor,
                "skipped_steps": self.skipped_steps,
                "bad_steps_in_a_row": self.bad_steps_in_a_row,
                "objective": self.objective.state_dict(),
            },
            keep=self.config.train.keep_checkpoints,
        )

    def train(self, stop_at: int | None = None) -> TrainResult:
        """Run to ``train.max_steps`` (or stop early after step ``stop_at``, checkpointed, resumable)."""
        cfg = self.config.train
        last_step = min(cfg.max_steps, stop_at) if stop_at is not None else cfg.max_steps
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "config.yaml").write_text(config_to_yaml(self.config))
        if cfg.report_to:
            self.accelerator.init_trackers(self.output_dir.name)
        with StepProgress(
            cfg.max_steps, self.step, self.config.method, cfg.log_every, method_keys=self.objective.summary_keys
        ) as progress:
            if self.step == 0 and self.config.eval.at_start:
                self._run_eval(progress)
            while self.step < last_step:
                self.step += 1
                metrics = self.training_step(self.step)
                self.metrics.log(metrics)
                self.metrics.write_samples(self._last_samples)
                progress.step_done(metrics)
                if self.bad_steps_in_a_row >= cfg.max_bad_steps:
                    last = latest_complete_checkpoint(self.checkpoint_dir)
                    raise NonFiniteTrainingError(
                        f"{self.bad_steps_in_a_row} steps in a row (up to step {self.step}) gave a non-finite loss or "
                        f"gradient and were skipped (train.max_bad_steps={cfg.max_bad_steps}); stopping. The last "
                        f"checkpoint, {last or 'none yet'}, is intact. Lower the learning rate, check the data of the "
                        "steps logged above, or raise train.max_bad_steps"
                    )
                if self.config.eval.every and self.step % self.config.eval.every == 0 and self.step < last_step:
                    self._run_eval(progress)
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < last_step:
                    self.save()
                pause_point("between_steps", self.step)  # test-only: a reliability test kills the process here
            if self.step == cfg.max_steps and self.step not in self.evals:
                self._run_eval(progress)
        self.save()
        final = None
        if self.step == cfg.max_steps:
            final = self.output_dir / "final_model"
            save_policy(self.policy, self.tokenizer, final)
        if cfg.report_to:
            self.accelerator.end_training()
        return TrainResult(self.output_dir, self.step, dict(self.evals), final)
