"""The Trainer: one loop for every method, read top to bottom in ``training_step``.

    plan -> this process's prompts -> rollouts + demonstrations -> rewards -> RolloutBatch
         -> objective.prepare_batch (advantages, masks) -> [old / reference log-probs, once]
         -> for each update: micro-batched loss/backward, global gradient norm, clip, AdamW
            (skipped if not finite) -> [an interleaved method's fine-tuning update on the examples it
            names, with its own AdamW] -> LR schedule -> objective.after_step -> global metrics

The objective decides what a step needs and what its loss is; the Trainer does everything else. It
runs as one process on CPU and under ``accelerate launch`` on many: ``train.prompts_per_step`` is
the global batch, each process samples and scores its own share, and every count, mean and norm a
loss or a decision reads is global (``train/processes.py``), so N processes compute the step one
process would. Rank 0 alone writes the run folder.
"""

from __future__ import annotations

import copy
import logging
import random
import warnings
import weakref
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from hybridrft.config import Config, config_to_dict, config_to_yaml, validate_config
from hybridrft.data import Example, load_run_examples
from hybridrft.data.stream import PromptShare, PromptStream, check_process_shares
from hybridrft.eval import EvalResult, evaluate_sharded
from hybridrft.models import inference_weights, load_policy, load_tokenizer, load_training_policy
from hybridrft.models.kv_cache import allow_checkpointed_cache
from hybridrft.objectives import (SFT, BatchTotals, FineTuningPlan, InterleavedFineTuning, PolicyOutputs, PromptOutcome,
                                  StepPlan, build_objective)
from hybridrft.rewards import get_reward, reward_counters
from hybridrft.rollout import (RolloutBatch, SamplingParams, VLLMSampler, assemble_batch, build_sampler,
                               demonstration_sequences, logged_samples, prompt_set, rollout_sequences, score_sequences,
                               update_parts)
from hybridrft.rollout.prefixes import sample_prefix_continuations
from hybridrft.train import checkpoint as ckpt
from hybridrft.train.logging import MetricsLogger, StepProgress
from hybridrft.train.memory import return_freed_blocks_at_once
from hybridrft.train.metrics import (StepTimer, add_contributions, combine_contributions, global_step_metrics, is_finite,
                                     mean_over_updates, step_costs)
from hybridrft.train.engines import Engine, build_accelerator
from hybridrft.train.preflight import (check_context_length, check_same_tokenizer, demonstration_lengths,
                                       describe_model, keep_examples_with_demonstrations, model_positions,
                                       warn_if_little_space)
from hybridrft.train.run_folder import (CONFIG_CHANGES_FILE, CONFIG_FILE, RunFolderError, RunFolderLock,
                                        prepare_run_folder, record_config_changes, resume_config_changes)
from hybridrft.train.stopping import StopRequested, StopSignals, TrainingStopped
from hybridrft.train.processes import Processes
from hybridrft.train.saving import save_final_model, save_step_checkpoint
from hybridrft.train.optimization import build_fine_tuning_optimizer, build_optimizer, set_phase_learning_rate
from hybridrft.train.scoring import PolicyScorer, batch_logprobs, entropy_sums, micro_batch_rows

logger = logging.getLogger(__name__)

# the fine-tuning optimizer's state in a checkpoint: in trainer_state.pt, or, where the engine shards optimizer
# state (FSDP2), written by every process into this folder of the checkpoint (trainer_state.pt then says SHARDED)
FINE_TUNING_OPTIMIZER, SHARDED = "fine_tuning_optimizer", "sharded"


class NonFiniteTrainingError(RuntimeError):
    """Too many steps in a row had a non-finite loss or gradient (``train.max_bad_steps``)."""

    def __init__(self, bad_steps: int, step: int, max_bad_steps: int, last_checkpoint: Path | None):
        super().__init__(
            f"{bad_steps} steps in a row (up to step {step}) gave a non-finite loss or gradient and were "
            f"skipped (train.max_bad_steps={max_bad_steps}); stopping. The last checkpoint, "
            f"{last_checkpoint or 'none yet'}, is intact. Lower the learning rate, check the data of the "
            "steps logged above, or raise train.max_bad_steps"
        )


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    evals: dict[int, EvalResult] = field(default_factory=dict)  # step -> held-out result
    final_model: Path | None = None
    is_main_process: bool = True  # rank 0 of a multi-process run writes the report


def sampler_context_length(config: Config) -> int:
    """The longest sequence a sampler is asked for: the longest prompt kept, plus the larger of the
    rollout and evaluation token budgets (vLLM's default ``max_model_len``)."""
    budget = max(config.rollout.max_new_tokens, config.eval.max_new_tokens or 0)
    return config.data.max_prompt_tokens + budget


def check_rollout_correction(config: Config) -> None:
    """``grpo.rollout_is`` needs the sampler's log-probs of what it sampled: a sampler that records
    them (native, vllm) and sampling (temperature > 0)."""
    if config.grpo.rollout_is == "none":
        return
    if config.rollout.backend == "hf" or config.rollout.temperature <= 0:
        raise ValueError(
            f"grpo.rollout_is={config.grpo.rollout_is} weights rollout tokens by pi_old / pi_sampler, which needs "
            "the sampler's log-probs: use rollout.backend native or vllm with rollout.temperature > 0 "
            f"(got backend {config.rollout.backend!r}, temperature {config.rollout.temperature})"
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def gathered_per_prompt(processes: Processes, share: PromptShare, values_of: Callable[[int], tuple]) -> list[tuple]:
    """``(training-set index, *values_of(k))`` for every prompt of the step's global batch, in global-batch
    order and the same on every process: each process gives its share (``k``: the prompt's group in
    this process's batch); they are gathered and ordered by position."""
    mine = [(position, index, *values_of(k)) for k, (position, index) in enumerate(zip(share.positions, share.indices))]
    return [outcome[1:] for outcome in sorted(outcome for part in processes.gather(mine) for outcome in part)]


def prompt_outcomes(processes: Processes, share: PromptShare, batch: RolloutBatch) -> list[PromptOutcome]:
    """Every prompt of the step's global batch with its rollouts' rewards (demonstrations left out)."""
    rewards, groups, is_demo = batch.reward.tolist(), batch.group.tolist(), batch.is_demo.tolist()
    return [PromptOutcome(index, rollout_rewards) for index, rollout_rewards in gathered_per_prompt(
        processes, share, lambda k: (tuple(r for r, g, demo in zip(rewards, groups, is_demo) if g == k and not demo),))]


def prefix_outcomes(processes: Processes, share: PromptShare, batch: RolloutBatch) -> list[tuple[int, tuple, tuple]]:
    """Every prompt of the step's global batch as ``(training-set index, rewards of its unprefixed rollouts,
    rewards of its prefixed ones)``."""
    rewards, groups, prefixed = batch.reward.tolist(), batch.group.tolist(), (batch.prefix_id >= 0).tolist()
    return gathered_per_prompt(processes, share, lambda k: (
        tuple(r for r, g, p in zip(rewards, groups, prefixed) if g == k and not p),
        tuple(r for r, g, p in zip(rewards, groups, prefixed) if g == k and p),
    ))


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
        validate_config(config)  # a config built in Python is held to the ranges a loaded one is
        self.config = config
        cfg = config.train
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)
        self.output_dir = Path(cfg.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.accelerator = build_accelerator(log_with=cfg.report_to or None, project_dir=str(self.output_dir),
                                             max_grad_norm=cfg.max_grad_norm)
        self.engine = Engine(self.accelerator)  # one process, DDP, FSDP2 or DeepSpeed under accelerate launch
        self.processes = Processes(self.accelerator)
        if cfg.skip_grad_norm_above is not None and not self.engine.can_skip_updates:
            raise ValueError("train.skip_grad_norm_above cannot withhold an update under DeepSpeed, which applies it "
                             "inside the backward pass; use DDP or FSDP2, or leave it unset")
        check_process_shares(cfg.prompts_per_step, cfg.updates_per_batch, self.processes.count)
        check_rollout_correction(config)
        self.signals = StopSignals(immediate=self.processes.count == 1)  # handlers installed while train() runs
        self.lock = self._claim_run_folder()  # one run per folder; a fresh run needs an empty one
        resume_from = ckpt.checkpoint_to_resume(
            self.checkpoint_dir, resume=cfg.resume, is_main=self.processes.is_main, wait=self.processes.wait,
        )
        self.resumed_from = resume_from
        self.config_changes: dict | None = self._check_resume_config(resume_from)  # None once recorded

        # tokenizer, objective, data: checked against the method and the model before the model loads
        self.tokenizer = tokenizer or load_tokenizer(str(resume_from / "model") if resume_from else config.model.name_or_path)
        self.objective = build_objective(config)
        source = config.data.source if train_examples is None else "the training examples given"
        if train_examples is None:
            train_examples, loaded_eval = load_run_examples(config)
            eval_examples = loaded_eval if eval_examples is None else eval_examples
        if self.objective.needs_demonstrations:
            train_examples = keep_examples_with_demonstrations(
                train_examples, on_error=config.data.on_error, method=config.method, source=source)
        self.train_set = prompt_set(self.tokenizer, train_examples, config.data, "training data", required=True)
        self.eval_set = prompt_set(self.tokenizer, eval_examples or [], config.data, "evaluation data")
        self._check_context_length(model)

        # the policy (a resumed run takes the weights of its checkpoint) and the reference
        model = load_training_policy(config.model, checkpoint=resume_from / "model" if resume_from else None, model=model)
        allow_checkpointed_cache(model)  # the shared-prompt forward's caches are safe to replay
        if self.processes.is_main:
            warn_if_little_space(self.output_dir, model)
        self.reference = None
        if self.objective.needs_reference:
            with self.engine.plain_model_loading():  # whole, not partitioned by ZeRO-3
                self.reference = load_policy(config.model.name_or_path, dtype=config.model.dtype).eval().requires_grad_(False)
        self.teacher = None
        if self.objective.needs_teacher:
            self.teacher = self._load_teacher()
        self.reward_fns = reward_fns or [
            (name, get_reward(name), weight) for name, weight in zip(config.reward.functions, config.reward.weights)
        ]

        # optimisation
        model.train()
        self.optimizer, self.scheduler = build_optimizer(model, cfg)
        self.model, self.optimizer = self.engine.prepare(PolicyScorer.for_run(self.config, model), self.optimizer)
        self.fine_tuning_optimizer = self._fine_tuning_optimizer()  # an interleaved method's (ReLIFT), else None
        if self.reference is not None:  # sharded like the policy under FSDP2
            self.reference = self.engine.prepare_frozen(PolicyScorer.for_run(self.config, self.reference), "the reference model")
        if self.teacher is not None:
            self.teacher = self.engine.prepare_frozen(PolicyScorer.for_run(self.config, self.teacher), "the teacher")
        if config.model.gradient_checkpointing and self.accelerator.device.type == "cpu":
            return_freed_blocks_at_once()  # memory over speed, as checkpointing asks (train/memory.py)
        self.sampler = build_sampler(config.rollout.backend, self.policy, self.tokenizer,
                                     batch_size=config.rollout.generation_batch_size, vllm=config.rollout.vllm,
                                     max_model_len=sampler_context_length(config))
        self.weights_version = 0  # optimizer updates made: a sampler with its own copy of the weights reloads when it changes

        self.step = 0
        self.timer = StepTimer(self.accelerator.device)  # the current step's phases
        self.prompts = PromptStream(len(self.train_set), cfg.seed, rank=self.processes.rank, world_size=self.processes.count)
        self.evals: dict[int, EvalResult] = {}
        self.eval_pending = False  # an evaluation due after self.step has not been made yet
        self._saved: tuple[int, bool] | None = None  # (step, eval_pending) of the last checkpoint this trainer wrote
        self.skipped_steps = self.bad_steps_in_a_row = 0  # steps skipped for a non-finite loss or gradient
        self.large_grad_skipped_updates = 0  # updates not applied for train.skip_grad_norm_above
        if resume_from:
            state = ckpt.load_training_state(
                resume_from, optimizer=self.optimizer, scheduler=self.scheduler,
                load_sharded_optimizer=lambda folder: self.engine.load_sharded_optimizer(self.model, self.optimizer, folder),
            )
            self.load_state(state)
            if state.get(FINE_TUNING_OPTIMIZER) == SHARDED:  # every process reads its shard
                self.engine.load_sharded_optimizer(self.model, self.fine_tuning_optimizer, resume_from / FINE_TUNING_OPTIMIZER)
            logger.info("resumed from %s at step %d", resume_from, self.step)
        self.metrics = MetricsLogger(self.output_dir, truncate_after=self.step, accelerator=self.accelerator,
                                     write=self.processes.is_main)

    def _load_teacher(self):
        """The frozen teacher (``teacher`` section), loaded as the reference model is, after its tokenizer
        is compared with the student's: distillation compares log-probs of the same token ids."""
        teacher = self.config.teacher
        if not teacher.name_or_path:
            raise ValueError(f"method {self.config.method} with distill.coef={self.config.distill.coef} distils from a "
                             "teacher: set teacher.name_or_path")
        check_same_tokenizer(self.tokenizer, load_tokenizer(teacher.name_or_path), "the student", f"the teacher {teacher.name_or_path}")
        with self.engine.plain_model_loading():  # whole, not partitioned by ZeRO-3, as the reference model
            model = load_policy(teacher.name_or_path, dtype=teacher.dtype or self.config.model.dtype)
        return model.eval().requires_grad_(False)

    def _claim_run_folder(self) -> RunFolderLock | None:
        """Rank 0 locks the run folder and checks it suits the run (empty for a fresh run; with
        ``train.overwrite`` the previous run's outputs are removed); every process gets the verdict."""
        cfg, lock, problem = self.config.train, None, None
        if self.processes.is_main:
            try:
                lock = RunFolderLock(self.output_dir).acquire()
                prepare_run_folder(self.output_dir, resume=cfg.resume, overwrite=cfg.overwrite)
            except RunFolderError as error:
                if lock is not None:
                    lock.release()
                problem = str(error)
        problem = self.processes.gather(problem)[0]
        if problem:
            raise RunFolderError(problem)
        if lock is not None:
            weakref.finalize(self, lock.release)  # a trainer dropped without train() lets go of its folder
        return lock

    def _check_resume_config(self, checkpoint: Path | None) -> dict[str, tuple[Any, Any]]:
        """The settings that differ from the config ``checkpoint`` was trained with (the run folder's
        ``config.yaml`` for a checkpoint that holds none); refuses those that change what the earlier
        steps meant unless ``train.allow_config_changes`` names them, and warns of the others."""
        if checkpoint is None:
            return {}
        saved_path = checkpoint / ckpt.CONFIG_FILE
        if not saved_path.is_file():
            saved_path = self.output_dir / CONFIG_FILE
        if not saved_path.is_file():
            logger.warning("resuming from %s, which records no config: the settings cannot be compared", checkpoint)
            return {}
        saved = yaml.safe_load(saved_path.read_text()) or {}
        changes = resume_config_changes(saved, config_to_dict(self.config), allowed=self.config.train.allow_config_changes)
        if "model.name_or_path" in changes:  # allowed (a model folder moved): it must still be the same tokenizer
            check_same_tokenizer(load_tokenizer(str(checkpoint / "model")), load_tokenizer(self.config.model.name_or_path),
                                 f"the checkpoint {checkpoint.name}", f"model.name_or_path={self.config.model.name_or_path}")
        if changes:
            logger.warning("resuming after step %s with changed settings (recorded in %s): %s", checkpoint.name,
                           CONFIG_CHANGES_FILE, "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()))
        return changes

    def _check_context_length(self, model) -> None:
        """Prompt + rollout, prompt + evaluation and prompt + demonstration budgets against the model's
        positions (``train/preflight.py``)."""
        config = self.config  # whole demonstrations only (Prefix-RFT cuts its prefixes to the rollout budget)
        plan_demos = self.objective.trains_on_whole_demonstrations
        name = config.model.name_or_path
        examples = self.train_set.examples
        demo_lengths = demonstration_lengths(self.tokenizer, examples, config.group.demos_per_prompt,
                                             config.data.max_demo_tokens) if plan_demos else None
        check_context_length(
            positions=model_positions(name, model), model_name=describe_model(name, model),
            train_prompt_ids=self.train_set.prompt_ids, eval_prompt_ids=self.eval_set.prompt_ids,
            rollout_tokens=config.rollout.max_new_tokens if self.objective.has_rl_term else None,
            eval_tokens=config.eval.max_new_tokens or config.rollout.max_new_tokens,
            demo_lengths=demo_lengths, demo_example_ids=[example.id for example in examples],
        )

    @property
    def policy(self):
        """The transformers model being trained (inside the scorer and whatever engine wraps it)."""
        return self.accelerator.unwrap_model(self.model).policy

    def _fine_tuning_optimizer(self) -> torch.optim.Optimizer | None:
        """The AdamW of an interleaved method's fine-tuning updates (objectives/interleaved.py): over the
        parameters the engine prepared, its moments apart from the step optimizer's. None for other methods."""
        objective, method = self.objective, self.config.method
        if not isinstance(objective, InterleavedFineTuning):
            return None
        if self.engine.deepspeed:
            raise ValueError(f"method {method} makes fine-tuning updates with an optimizer of their own, which DeepSpeed "
                             "cannot hold beside its engine's; use DDP or FSDP2")
        examples, updates, count = objective.fine_tuning_examples, objective.fine_tuning_updates, self.processes.count
        if examples % count or (examples // count) % updates:
            raise ValueError(f"method {method}: the {examples} examples of a fine-tuning update must divide evenly among "
                             f"the {count} processes, and each share into its {updates} update(s)")
        return build_fine_tuning_optimizer(self.model, self.config.train)

    # ------------------------------------------------------------------ the step

    def training_step(self, step: int) -> dict[str, Any]:
        """One step: one generation batch, then one or more optimizer updates on it; returns its metrics."""
        cfg = self.config.train
        self.timer = StepTimer(self.accelerator.device)
        counts_before = reward_counters()  # process-wide counters: the step logs its own share
        updates = cfg.updates_per_batch * cfg.epochs_per_batch
        with self.timer("step"):
            with self.signals.interruptible():  # a stop request abandons the step until its first update
                plan, batch, metrics = self.collect(step)
                with self.timer("train"):
                    if updates > 1 and plan.kind != SFT:  # the behaviour policy of every later update's ratio
                        batch.old_logp = self._logprobs(batch, self.model)
                    if self.reference is not None:
                        batch.ref_logp = self._logprobs(batch, self.reference)
                if self.teacher is not None and self.objective.needs_teacher_logprobs:
                    with self.timer("teacher"):  # the teacher's forward, its own column of the step's time
                        batch.teacher_logp = self._logprobs(batch, self.teacher)
                self._abandon_step_if_stopping()
            with self.timer("train"):  # from here on the step is finished, whatever arrives
                set_phase_learning_rate(
                    self.optimizer, self.scheduler, base=cfg.learning_rate,
                    phase_rate=plan.learning_rate, reset=plan.reset_optimizer,
                )
                per_update = self.updates(batch, plan)
            fine_tuning = self.interleaved_fine_tuning(step, step_skipped=bool(per_update[-1]["skipped"]))
            if self.objective.continues_prefixes and not per_update[-1]["skipped"]:
                fine_tuning.update(self.objective.observe_prefix_outcomes(self._step_prefix_outcomes))
        metrics.update(mean_over_updates(per_update))
        metrics.update(fine_tuning)
        skipped = bool(metrics.pop("skipped"))
        metrics["train/large_grad_skips"] = self._count_large_grad_skips(step, per_update, metrics.pop("large_grad_skip"))
        if skipped:
            self._record_skipped_step(step, per_update[-1])
        else:
            self.bad_steps_in_a_row = 0
            with warnings.catch_warnings():  # a step whose updates were all withheld (train.skip_grad_norm_above)
                # steps the schedule without an optimizer step, as HPT's script does: torch's order warning is moot
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                self.scheduler.step()  # once per step, as verl steps its scheduler once per generation batch
            metrics.update(self.objective.after_step(step, plan, metrics["grad_norm"]))
        metrics.update({"train/skipped": float(skipped), "train/skipped_steps": self.skipped_steps,
                        "train/large_grad_skipped_updates": self.large_grad_skipped_updates})
        metrics["train/processes"] = self.processes.count
        metrics.update(step_costs(metrics, self.processes.gather(self.timer.metrics()), updates))
        counts = {name: total - counts_before[name] for name, total in reward_counters().items()}
        metrics.update(zip(counts, self.processes.sum(list(counts.values()))))  # reward calls, errors, timeouts
        return metrics

    def collect(self, step: int) -> tuple[StepPlan, RolloutBatch, dict[str, Any]]:
        """Plan, this process's prompts, rollouts and demonstrations, rewards, advantages."""
        cfg, rollout = self.config.train, self.config.rollout
        plan: StepPlan = self.objective.plan(step)
        self.processes.check_same((plan.kind, plan.learning_rate), f"step {step}'s plan")
        share = self.prompts.next_share(step, cfg.prompts_per_step)
        examples = [self.train_set.examples[i] for i in share.indices]
        prompts = [self.train_set.prompt_ids[i] for i in share.indices]
        self._step_example_ids = [example.id for example in examples]

        params = SamplingParams(plan.rollouts_per_prompt, rollout.temperature, rollout.top_p, rollout.max_new_tokens)
        # each prompt with its own seed: the same rollouts on any process count
        with self.sampling_weights(self.timer) if params.n > 0 else nullcontext(), self.timer("generate"):
            if self.objective.continues_prefixes:
                rollouts = self.prefix_continuations(step, share, examples, prompts, params)
            else:
                completions = self.sampler.generate(prompts, params, seeds=share.seeds) if params.n > 0 else []
                rollouts = rollout_sequences(completions)
        # test-only: a reliability test kills or signals the process here
        ckpt.pause_point("sampling", step, until=lambda: self.signals.requested is not None)
        self._abandon_step_if_stopping()
        demos, demo_truncated = demonstration_sequences(
            self.tokenizer, examples, plan.demos_per_prompt,
            eos_id=self.sampler.stop_token_id, max_tokens=self.config.data.max_demo_tokens,
        )
        sequences = rollouts + demos
        with self.timer("reward"):  # demonstrations are scored too: they should earn full reward
            rewards, per_fn = score_sequences(self.reward_fns, examples, sequences)
        batch = assemble_batch(prompts, sequences, rewards, pad_id=self.tokenizer.pad_token_id,
                               with_prefixes=self.objective.continues_prefixes)

        metrics: dict[str, Any] = {"step": step, "plan": plan.kind, **plan.info}
        decisions = self.objective.prepare_batch(batch, plan)  # advantages, masks, coefficients
        if self.fine_tuning_optimizer is not None:  # an interleaved method decides from every prompt's outcome
            self._step_outcomes = prompt_outcomes(self.processes, share, batch)
        if self.objective.continues_prefixes:  # an adaptive prefix moves with every prompt's outcome
            self._step_prefix_outcomes = prefix_outcomes(self.processes, share, batch)
        metrics.update(global_step_metrics(
            self.processes, decisions, batch, per_fn, share.positions, sum(len(s.completion_ids) - s.prefix_length for s in rollouts),
            demo_truncated, self.config.reward.correct_threshold,
        ))
        samples = logged_samples(step, sequences, rewards, share.positions)[: cfg.log_samples]
        self._last_samples = [sample for mine in self.processes.gather(samples) for sample in mine][: cfg.log_samples]
        self._abandon_step_if_stopping()
        return plan, batch, metrics

    def prefix_continuations(self, step: int, share, examples, prompts, params: SamplingParams) -> list:
        """The step's rollouts of a method that continues demonstration prefixes: the method draws each
        prompt's slots from its demonstrations' token lengths, and every slot is sampled from
        ``prompt + prefix`` token ids, ``rollouts_per_prefix`` continuations each (rollout/prefixes.py)."""
        demo_ids = [[self.tokenizer(text, add_special_tokens=False).input_ids for text in example.demonstrations]
                    for example in examples]
        slots = self.objective.rollout_prefixes(step, share.indices, [[len(d) for d in demos] for demos in demo_ids])
        slot_params = SamplingParams(self.objective.rollouts_per_prefix, params.temperature, params.top_p, params.max_new_tokens)
        return sample_prefix_continuations(self.sampler, self.tokenizer, prompts, demo_ids, slots, slot_params, share.seeds)

    def interleaved_fine_tuning(self, step: int, *, step_skipped: bool) -> dict[str, float]:
        """After the step's own updates, an interleaved method (ReLIFT) sees every prompt's outcome and may
        ask for a fine-tuning update; returns its decision metrics and the update's. A skipped step
        changes nothing, so the method does not see it."""
        if self.fine_tuning_optimizer is None or step_skipped:
            return {}
        fine_tuning = self.objective.plan_fine_tuning(step, self._step_outcomes)
        self.processes.check_same(fine_tuning.indices, f"step {step}'s fine-tuning examples")
        metrics = dict(fine_tuning.info)
        if fine_tuning.indices:
            with self.timer("fine_tune"):
                metrics.update(self.fine_tune(fine_tuning))
        return metrics

    def fine_tune(self, fine_tuning: FineTuningPlan) -> dict[str, float]:
        """Fine-tuning updates on the demonstrations of the training examples ``fine_tuning`` names, with
        the fine-tuning optimizer at the plan's constant learning rate and clip. Each process takes its
        contiguous share of the examples; the prompt stream does not move. Metrics: ``fine_tune/...``."""
        plan, count, rank = fine_tuning.update_plan, self.processes.count, self.processes.rank
        per_process = len(fine_tuning.indices) // count
        mine = fine_tuning.indices[rank * per_process:(rank + 1) * per_process]
        demos, truncated = demonstration_sequences(
            self.tokenizer, [self.train_set.examples[i] for i in mine], plan.demos_per_prompt,
            eos_id=self.sampler.stop_token_id, max_tokens=self.config.data.max_demo_tokens,
        )
        # no fine-tuning loss reads a reward: the demonstrations are not scored again
        batch = assemble_batch([self.train_set.prompt_ids[i] for i in mine], demos, [0.0] * len(demos),
                               pad_id=self.tokenizer.pad_token_id)
        self.objective.prepare_batch(batch, plan)
        for group in self.fine_tuning_optimizer.param_groups:
            group["lr"] = plan.learning_rate  # constant: the reference gives its fine-tuning optimizer no schedule
        per_update = self.updates(batch, plan, fine_tuning=fine_tuning)
        metrics = {k: v for k, v in mean_over_updates(per_update).items() if not k.startswith("time/") and k != "large_grad_skip"}
        if metrics["skipped"]:
            logger.warning("a fine-tuning update had a non-finite loss (%s) or gradient norm (%s) and was not applied",
                           per_update[-1]["loss"], per_update[-1]["grad_norm"])
        metrics["demo_truncated"], metrics["tokens"] = self.processes.sum([truncated, int(batch.loss_mask.sum())])
        return {f"fine_tune/{name}": value for name, value in metrics.items()}

    def updates(self, batch: RolloutBatch, plan: StepPlan, fine_tuning: FineTuningPlan | None = None) -> list[dict[str, float]]:
        """The step's optimizer updates: ``epochs_per_batch`` passes over ``updates_per_batch`` parts
        of the batch (a fine-tuning update: the plan's epochs and parts, its own optimizer). An update
        with a non-finite value is not taken, and neither is any after it."""
        cfg = self.config.train
        epochs, parts = (cfg.epochs_per_batch, cfg.updates_per_batch) if fine_tuning is None else (fine_tuning.epochs, fine_tuning.updates)
        per_update: list[dict[str, float]] = []
        for _ in range(epochs):
            for rows in update_parts(batch.group, parts):
                metrics = self.compute_gradients(batch.select(rows), plan)
                # test-only: a reliability test signals the process here, inside the step's first update
                ckpt.pause_point("update", self.step, until=lambda: self.signals.requested is not None)
                metrics.update(self.optimizer_update(metrics["loss"], fine_tuning=fine_tuning))
                per_update.append(combine_contributions(self.processes.gather(metrics)))
                if metrics["skipped"]:
                    return per_update
        return per_update

    def compute_gradients(self, batch: RolloutBatch, plan: StepPlan) -> dict[str, float]:
        """Loss and backward of one update batch over length-sorted micro-batches, normalised by the
        update batch's global totals: the accumulated gradients equal the gradient of the full-batch loss."""
        totals = BatchTotals({name: self.processes.mask_totals(mask) for name, mask in batch.masks.items()})
        micro_batches = self._micro_batches(batch)
        entropy_masks = self.objective.entropy_means_needed(plan)
        if entropy_masks:  # batch-granularity weights need the global batch's mean entropy first
            sums = self.processes.sum(entropy_sums(self.model, batch, micro_batches, entropy_masks, self.accelerator.device))
            totals.entropy_mean = {name: s / max(totals[name].num_tokens, 1.0) for name, s in zip(entropy_masks, sums)}

        timer = StepTimer(self.accelerator.device)
        sums: dict[str, float] = {"loss": 0.0}
        for k, index in enumerate(micro_batches):
            micro = batch.select(index).to(self.accelerator.device)
            # gradients are all-reduced once per update, on the last micro-batch
            with self.engine.accumulating(self.model, last=k == len(micro_batches) - 1):
                with timer("forward"):
                    loss, term_metrics = self.objective.step_loss(micro, self._forward(micro, jsd=self.objective.uses_jsd(plan)), totals, plan)
                    sums["loss"] += float(loss.detach())  # also waits for an accelerator: the split is honest
                with timer("backward"):
                    # processes' gradients are averaged; our losses are already normalised globally
                    self.accelerator.backward(loss * self.processes.count)
            add_contributions(sums, term_metrics)
        return {**sums, **timer.metrics()}

    def optimizer_update(self, loss: float = 0.0, fine_tuning: FineTuningPlan | None = None) -> dict[str, float]:
        """Record the pre-clip global gradient norm, clip, take the AdamW step, zero the gradients. A
        fine-tuning update (``fine_tuning``) steps the fine-tuning optimizer with the plan's clip instead.

        An update whose loss or gradient norm is not finite on any process is not taken by any: the
        weights and the optimizer's state stay as they were."""
        cfg = self.config.train
        optimizer = self.optimizer if fine_tuning is None else self.fine_tuning_optimizer
        max_norm = cfg.max_grad_norm if fine_tuning is None else fine_tuning.max_grad_norm
        limit = cfg.skip_grad_norm_above if fine_tuning is None else None  # a setting of the step's updates
        timer = StepTimer(self.accelerator.device)
        with timer("optimizer"):
            grad_norm = self.engine.clip_gradients(self.model, max_norm)
            skipped = not self.processes.all_true(is_finite(loss, grad_norm))
            too_large = not skipped and limit is not None and grad_norm > limit  # the global norm: one verdict
            self.engine.step(optimizer, take=not (skipped or too_large))
        self.weights_version += 1  # also after a skipped update: under DeepSpeed it was applied regardless
        return {"grad_norm": grad_norm, "lr": optimizer.param_groups[0]["lr"], "skipped": float(skipped),
                "large_grad_skip": float(too_large), **timer.metrics()}

    def _count_large_grad_skips(self, step: int, per_update: list[dict[str, float]], mean: float) -> float:
        """The step's updates not applied for ``train.skip_grad_norm_above`` (logged, and counted
        over the run); unlike a non-finite update they stop neither the step nor the run."""
        count = round(mean * len(per_update))
        if count:
            self.large_grad_skipped_updates += count
            norms = ", ".join(f"{u['grad_norm']:.1f}" for u in per_update if u["large_grad_skip"])
            logger.warning("step %d: %d update(s) not applied, gradient norm %s above train.skip_grad_norm_above=%s",
                           step, count, norms, self.config.train.skip_grad_norm_above)
        return float(count)

    def _record_skipped_step(self, step: int, bad_update: dict[str, float]) -> None:
        self.skipped_steps += 1
        self.bad_steps_in_a_row += 1
        logger.warning(
            "step %d skipped: non-finite loss (%s) or gradient norm (%s); the step's examples: %s",
            step, bad_update["loss"], bad_update["grad_norm"], ", ".join(self._step_example_ids),
        )

    # ------------------------------------------------------------------ forward passes

    def _micro_batches(self, batch: RolloutBatch) -> list[list[int]]:
        return micro_batch_rows(batch, self.config.train.micro_batch_size, self.config.train.shared_prompt_forward)

    def _forward(self, micro: RolloutBatch, scorer=None, *, jsd: bool = False) -> PolicyOutputs:
        """Log-probs and entropies of ``micro`` under the policy (through its engine) or ``scorer``; with
        ``jsd``, GKD's JSD to the teacher too, in the same pass (its own time column inside the forward)."""
        scorer = self.model if scorer is None else scorer
        if jsd:
            distill = self.config.distill
            return PolicyOutputs(*scorer(micro.input_ids, micro.attention_mask, micro.loss_mask, micro.group,
                                         teacher=self.teacher.policy, jsd_beta=distill.beta,
                                         jsd_temperature=distill.jsd_temperature))
        return PolicyOutputs(*scorer(micro.input_ids, micro.attention_mask, micro.loss_mask, micro.group))

    def _logprobs(self, batch: RolloutBatch, scorer) -> torch.Tensor:
        return batch_logprobs(scorer, batch, self._micro_batches(batch), self.accelerator.device)

    @contextmanager
    def sampling_weights(self, timer: StepTimer | None = None):
        """The sampler reads the current weights inside this block. The in-process samplers read the
        policy itself, whole (gathered under FSDP2 or ZeRO-3) for as long as they sample; the vLLM
        engine holds a copy, into which the policy's weights (merged under LoRA) are pushed when an
        update has changed them since the last push, timed as ``time/weight_sync``."""
        if not isinstance(self.sampler, VLLMSampler):
            with self.engine.whole_parameters(self.model):
                yield
            return
        if self.sampler.weights_version != self.weights_version:
            with timer("weight_sync") if timer else nullcontext(), self.engine.whole_parameters(self.model):
                self.sampler.load_weights(inference_weights(self.policy).items(), version=self.weights_version)
        yield

    # ------------------------------------------------------------------ evaluation and the run

    def evaluate(self, on_batch: Callable[[int], None] | None = None) -> EvalResult:
        """Greedy accuracy on the held-out prompts, shared among the processes and gathered."""
        cfg = self.config
        with self.sampling_weights():
            return evaluate_sharded(
                self.sampler, self.eval_set.examples, self.eval_set.prompt_ids, self.reward_fns,
                rank=self.processes.rank, count=self.processes.count, gather=self.processes.gather, on_batch=on_batch,
                max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                batch_size=cfg.eval.batch_size, correct_threshold=cfg.reward.correct_threshold,
            )

    def _run_eval(self, progress: StepProgress) -> None:
        """Evaluate after ``self.step``. A stop request abandons the evaluation (one process) and puts the
        RNGs back as they were before it, so the resumed run's evaluation is the one this would have been."""
        self.eval_pending = True
        if not len(self.eval_set):
            self.eval_pending = False
            return
        task = progress.start_eval(len(self.eval_set), self.step)
        rng = ckpt.rng_states()
        try:
            with self.signals.interruptible():
                ckpt.pause_point("eval", self.step, until=lambda: self.signals.requested is not None)  # test-only
                result = self.evaluate(on_batch=lambda k: progress.advance_eval(task, k))
        except StopRequested:
            ckpt.restore_rng_states(rng)
            raise
        self.eval_pending = False
        progress.finish_eval(task, result)
        self.evals[self.step] = result
        self.metrics.log({"step": self.step, **result.metrics()}, kind="eval")
        self.metrics.write_generations(self.step, result.records)

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint holds beside weights, optimizer and schedule (RNG states are added to it)."""
        return {**self._progress_state(), FINE_TUNING_OPTIMIZER: self._fine_tuning_optimizer_state()}

    def _progress_state(self) -> dict[str, Any]:
        """Where the run is: what a step changes before its first optimizer update, and the counters.
        ``eval_pending``: the evaluation due after this step was abandoned (a resumed run makes it first)."""
        return {"step": self.step, "data_cursor": self.prompts.cursor, "skipped_steps": self.skipped_steps,
                "bad_steps_in_a_row": self.bad_steps_in_a_row, "large_grad_skipped_updates": self.large_grad_skipped_updates,
                "objective": self.objective.state_dict(), "eval_pending": self.eval_pending}

    def _fine_tuning_optimizer_state(self) -> dict[str, Any] | str | None:
        """None (no fine-tuning optimizer, or no fine-tuning update made yet: nothing to keep), its
        state, or SHARDED where the engine shards optimizer state (``save`` writes the shards)."""
        optimizer = self.fine_tuning_optimizer
        if optimizer is None or not optimizer.state:
            return None
        return SHARDED if self.engine.shards_optimizer else optimizer.state_dict()

    def load_state(self, state: dict[str, Any]) -> None:
        self.step, self.prompts.cursor = state["step"], state["data_cursor"]
        self.skipped_steps, self.bad_steps_in_a_row = state.get("skipped_steps", 0), state.get("bad_steps_in_a_row", 0)
        self.large_grad_skipped_updates = state.get("large_grad_skipped_updates", 0)
        self.eval_pending = state.get("eval_pending", False)
        self.objective.load_state_dict(state["objective"])
        if isinstance(state.get(FINE_TUNING_OPTIMIZER), dict):  # SHARDED: read from the checkpoint's folder
            self.fine_tuning_optimizer.load_state_dict(state[FINE_TUNING_OPTIMIZER])

    def save(self) -> Path:
        path = save_step_checkpoint(
            self.checkpoint_dir, self.step, engine=self.engine, processes=self.processes, model=self.model,
            policy=self.policy, tokenizer=self.tokenizer, optimizer=self.optimizer, scheduler=self.scheduler,
            trainer_state=self.state_dict(), keep=self.config.train.keep_checkpoints,
            sharded_optimizers={FINE_TUNING_OPTIMIZER: self.fine_tuning_optimizer}
            if self._fine_tuning_optimizer_state() == SHARDED else None,
            config_yaml=config_to_yaml(self.config),
        )
        self._saved = (self.step, self.eval_pending)
        return path

    # ------------------------------------------------------------------ stopping on a signal (train/stopping.py)

    def _stop_agreed(self) -> bool:
        """Whether a stop was requested, as every process sees it (one all-reduce under several)."""
        local = self.signals.requested is not None
        return local if self.processes.count == 1 else not self.processes.all_true(not local)

    def _abandon_step_if_stopping(self) -> None:
        """A point where the processes agree to abandon the step (before its first update)."""
        if self._stop_agreed():
            raise StopRequested(self.signals.requested)

    def _snapshot(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The state a step starts from (its abandonment rewinds to it); the weights and optimizers
        are not in it: nothing before a step's first update changes them."""
        return copy.deepcopy(self._progress_state()), ckpt.rng_states()

    def _rewind(self, snapshot: tuple[dict[str, Any], dict[str, Any]]) -> None:
        state, rng = snapshot
        self.load_state(state)
        ckpt.restore_rng_states(rng)

    def _stop(self) -> None:
        """Checkpoint the last finished step (unless it is saved already) and raise ``TrainingStopped``."""
        name = next((n for n in self.processes.gather(self.signals.requested) if n), "a signal to another process")
        checkpoint = None
        if self.step > 0:
            saved = self._saved == (self.step, self.eval_pending)
            checkpoint = self.checkpoint_dir / f"step-{self.step:06d}" if saved else self.save()
        detail = " (the evaluation due after this step runs first when the run resumes)" if self.eval_pending else ""
        raise TrainingStopped(name, self.step, checkpoint, self.output_dir, detail)

    def train(self, stop_at: int | None = None) -> TrainResult:
        """Run to ``train.max_steps`` (or stop early after step ``stop_at``, checkpointed, resumable).

        SIGTERM or SIGINT stops it: the last finished step is checkpointed and ``TrainingStopped`` is
        raised (``train/stopping.py``). The run folder's lock is released when this returns."""
        try:
            with self.signals:
                return self._train(stop_at)
        finally:
            if self.lock is not None:
                self.lock.release()

    def _train(self, stop_at: int | None) -> TrainResult:
        cfg, main = self.config.train, self.processes.is_main
        last_step = min(cfg.max_steps, stop_at) if stop_at is not None else cfg.max_steps
        if main:
            config_file = self.output_dir / CONFIG_FILE
            # a fresh run's folder has none; a resumed run keeps the record it started with; so does a second train()
            if not config_file.exists():
                ckpt.replace_durably(config_file, config_to_yaml(self.config).encode())
            if self.resumed_from is not None and self.config_changes is not None:
                record_config_changes(self.output_dir, self.step, self.config_changes)
                self.config_changes = None  # once: a later train() of this trainer continues the same resume
        if cfg.report_to:
            self.accelerator.init_trackers(self.output_dir.name)
        with StepProgress(
            cfg.max_steps, self.step, self.config.method, cfg.log_every,
            method_keys=self.objective.summary_keys, enabled=main,
        ) as progress:
            try:
                if (self.step == 0 and self.config.eval.at_start) or self.eval_pending:
                    self._run_eval(progress)
                while self.step < last_step:
                    if self._stop_agreed():
                        self._stop()
                    start = self._snapshot()
                    self.step += 1
                    try:
                        metrics = self.training_step(self.step)
                    except StopRequested:
                        self._rewind(start)  # the abandoned step never happened
                        raise
                    self.metrics.log(metrics)
                    self.metrics.write_samples(self._last_samples)
                    progress.step_done(metrics)
                    if self.bad_steps_in_a_row >= cfg.max_bad_steps:
                        last = ckpt.latest_complete_checkpoint(self.checkpoint_dir)
                        raise NonFiniteTrainingError(self.bad_steps_in_a_row, self.step, cfg.max_bad_steps, last)
                    self.eval_pending = bool(self.config.eval.every and self.step % self.config.eval.every == 0
                                             and self.step < last_step)
                    if self._stop_agreed():
                        self._stop()
                    if self.eval_pending:
                        self._run_eval(progress)
                    if cfg.save_every and self.step % cfg.save_every == 0 and self.step < last_step:
                        self.save()
                    ckpt.pause_point("between_steps", self.step)  # test-only: a reliability test kills the process here
                if self.step == cfg.max_steps and self.step not in self.evals:
                    self._run_eval(progress)
            except StopRequested:
                self._stop()
        if self.signals.requested:
            logger.warning("%s arrived after the last step: finishing the run's final save", self.signals.requested)
        self.save()
        final = None
        if self.step == cfg.max_steps:
            final = self.output_dir / "final_model"
            save_final_model(
                final, engine=self.engine, processes=self.processes, model=self.model, policy=self.policy,
                tokenizer=self.tokenizer, model_config=self.config.model,
            )
        self.engine.finish()  # DeepSpeed: the engine is destroyed; the run cannot train further
        if cfg.report_to:
            self.accelerator.end_training()
        return TrainResult(self.output_dir, self.step, dict(self.evals), final, main)
