"""The objective interface the trainer drives, and the registry of objectives by name.

A step, seen from an objective, runs one way:

1. ``plan(step)`` says what the step needs: rollouts per prompt, demonstrations per prompt, the
   kind of update (SASR decides SFT or RL here), and optionally the step's learning rate.
2. The trainer samples, scores and builds a ``RolloutBatch``; ``prepare(batch, plan)`` writes onto
   it everything the loss needs: ``batch.advantage``, named token masks in ``batch.masks`` and
   named per-sequence coefficients in ``batch.coefficients``. It returns step-level metrics of its
   decisions. The batch slices all of it with its rows, so a micro-batch carries its own share.
3. The trainer measures every mask over the whole update batch (``BatchTotals``), so a
   micro-batch's loss is already normalised by the full batch: summing micro-batch losses gives the
   full-batch loss exactly.
4. ``loss(micro_batch, outputs, totals, plan)`` reads only the micro-batch, the policy outputs and
   the totals, and returns the scalar loss and named metrics (each a contribution that sums over
   micro-batches to its full-batch value). Nothing passes from ``prepare`` to ``loss`` on ``self``.
5. ``after_step(step, plan, grad_norm)`` sees the pre-clip gradient norm (SASR uses it).

What every method with an RL term shares is added here, not in each method: the entropy bonus and
the k3 KL penalty (``grpo`` section), and the diagnostics every run logs (entropy of rollouts and
demonstrations, the policy's probability of demonstration tokens, the KL to the initial policy).
A method declares its own config section (a dataclass, read as ``config.<name>``) and its
reference defaults for shared keys as class attributes; ``register_objective`` registers both.
"""

from __future__ import annotations

import copy
import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from hybridrft.config import Config, register_method_section
from hybridrft.ops import MaskTotals, aggregate, k3_kl, rollout_importance_weights, sampler_mismatch, zero_outside
from hybridrft.ops.distill import reverse_kl_policy_terms
from hybridrft.rollout import RolloutBatch

SFT, RL, MIXED = "sft", "rl", "mixed"

# masks every batch carries (set by ``prepare_batch``), beside the method's own
COMPLETIONS = "completions"  # every completion token of the batch
ROLLOUT = "rollout"  # completion tokens of the policy's own rollouts
DEMO = "demo"  # completion tokens of demonstrations
TRAINED = "trained"  # the tokens the method's loss covers (default: every completion token)
REGULARISED = "regularised"  # the tokens the entropy bonus covers (``grpo.entropy_tokens``)
SAMPLED = "sampled"  # rollout tokens the sampler drew: every rollout token but a continued prefix's (Prefix-RFT)
SAMPLED_CORRECT, SAMPLED_INCORRECT = "sampled_correct", "sampled_incorrect"  # of correct / incorrect rollouts


@dataclass(frozen=True)
class StepPlan:
    kind: str  # sft | rl | mixed
    rollouts_per_prompt: int
    demos_per_prompt: int
    info: dict[str, float] = field(default_factory=dict)  # decision metrics, logged with the step
    learning_rate: float | None = None  # this step's base learning rate (default: train.learning_rate)
    reset_optimizer: bool = False  # clear the optimizer's moments before this step (a phase switch)


@dataclass
class PolicyOutputs:
    """Teacher-forced policy outputs on a micro-batch, aligned with ``input_ids``."""

    logp: torch.Tensor  # [B, T], with gradient
    entropy: torch.Tensor  # [B, T], with gradient (detach where a weight must not be trained)
    jsd: torch.Tensor | None = None  # [B, T], with gradient: GKD's JSD to the teacher (distill.loss=jsd)


@dataclass
class BatchTotals:
    """Full-batch sizes of the batch's named masks, and optional full-batch entropy means."""

    masks: dict[str, MaskTotals]
    entropy_mean: dict[str, float] = field(default_factory=dict)

    def __getitem__(self, name: str) -> MaskTotals:
        return self.masks[name]


def sequence_mask(mask_rows: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Token mask of the completion tokens of the rows selected by ``mask_rows [N]``."""
    return loss_mask & mask_rows.unsqueeze(-1)


def rollout_mask(batch: RolloutBatch) -> torch.Tensor:
    return sequence_mask(~batch.is_demo, batch.loss_mask)


def demo_mask(batch: RolloutBatch) -> torch.Tensor:
    return sequence_mask(batch.is_demo, batch.loss_mask)


def behaviour_logp(batch: RolloutBatch, out: PolicyOutputs) -> torch.Tensor:
    """``log pi_old``: the log-probs stored before the first of several updates, else the current
    ones, detached (each batch used for one update: ratio 1)."""
    return batch.old_logp if batch.old_logp is not None else out.logp.detach()


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor, totals: MaskTotals) -> torch.Tensor:
    """Contribution of a micro-batch to the full-batch token mean of ``values`` (for metrics)."""
    return zero_outside(values.detach(), mask).sum() / max(totals.num_tokens, 1.0)


def finite_outside_completions(batch: RolloutBatch, out: PolicyOutputs) -> tuple[RolloutBatch, PolicyOutputs]:
    """Every per-token input of a loss set to 0 outside the completion tokens (selected, not
    multiplied): a -inf log-prob at a padded or prompt position, which a user's model or another
    kernel may produce, then costs nothing, where ``exp(-inf - -inf)`` or ``-inf * 0`` would make the
    loss or its gradient nan. The batch is copied, not changed."""
    mask = batch.loss_mask
    cleaned = copy.copy(batch)
    for name in ("old_logp", "ref_logp", "teacher_logp", "sampler_logp"):
        value = getattr(batch, name)
        if value is not None:
            setattr(cleaned, name, zero_outside(value, mask))
    jsd = None if out.jsd is None else zero_outside(out.jsd, mask)
    return cleaned, PolicyOutputs(zero_outside(out.logp, mask), zero_outside(out.entropy, mask), jsd)


class Objective(ABC):
    """Base class of every training method; subclasses live one per file in this package."""

    name: ClassVar[str]
    config_section: ClassVar[type | None] = None  # the method's own dataclass, read as config.<name>
    defaults: ClassVar[dict[str, Any]] = {}  # the method's reference values for shared keys
    has_rl_term: ClassVar[bool] = True  # False for pure SFT: no entropy bonus, no KL, no reference
    trains_on_demonstrations: ClassVar[bool] = True  # False: the method never reads a demonstration (GRPO)
    summary_keys: ClassVar[tuple[tuple[str, str], ...]] = ()  # (metric, label) for the progress line
    # True: the step's rollouts continue demonstration prefixes the method draws (``rollout_prefixes``),
    # ``rollouts_per_prefix`` continuations per slot (Prefix-RFT)
    continues_prefixes: ClassVar[bool] = False
    distills: ClassVar[bool] = False  # True: the method's loss is the distillation term (the distill method)

    def __init__(self, config: Config):
        self.config = config
        self.aggregation = config.loss.aggregation
        self.policy_aggregation = config.loss.policy_aggregation or config.loss.aggregation
        self.max_len = self.completion_budget(config)
        self.token_sum_divisor = config.loss.token_sum_divisor

    def completion_budget(self, config: Config) -> int:
        """``L_max`` of Dr. GRPO's normaliser: ``loss.max_completion_length``, else the longest completion
        the method trains on, the rollout budget and, for a method that trains on whole demonstrations,
        ``data.max_demo_tokens`` (a method that never does, GRPO, Prefix-RFT, distill, divides by the
        rollout budget alone, as TRL's ``max_completion_length`` and verl's ``loss_agg_max_tokens``)."""
        if config.loss.max_completion_length:
            return config.loss.max_completion_length
        return config.max_completion_length if self.trains_on_whole_demonstrations else config.rollout.max_new_tokens

    @property
    def trains_on_whole_demonstrations(self) -> bool:
        """Whole demonstrations enter the step's batch (Prefix-RFT's enter as prefixes of rollouts only)."""
        return self.trains_on_demonstrations and self.config.group.demos_per_prompt > 0

    @abstractmethod
    def plan(self, step: int) -> StepPlan: ...

    @abstractmethod
    def prepare(self, batch: RolloutBatch, plan: StepPlan) -> dict[str, float]:
        """Write advantages, named masks and coefficients onto ``batch``; return decision metrics."""

    @abstractmethod
    def loss(
        self, batch: RolloutBatch, out: PolicyOutputs, totals: BatchTotals, plan: StepPlan
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...

    def entropy_means_needed(self, plan: StepPlan) -> tuple[str, ...]:
        """Masks whose full-batch mean entropy ``loss`` needs (costs a no-grad forward pass)."""
        return ()

    def after_step(self, step: int, plan: StepPlan, grad_norm: float) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @property
    def needs_demonstrations(self) -> bool:
        """Every training example must have a demonstration (checked before the model loads)."""
        return self.trains_on_whole_demonstrations

    @property
    def needs_teacher(self) -> bool:
        """A teacher is loaded: the distill method, or ``distill.coef > 0`` on an RL method."""
        return self.distills or (self.has_rl_term and self.config.distill.coef > 0)

    @property
    def needs_teacher_logprobs(self) -> bool:
        """The teacher's log-probs of the batch's tokens (the reverse-KL term), a forward before the updates."""
        return self.needs_teacher and self.config.distill.loss == "reverse_kl"

    def uses_jsd(self, plan: StepPlan) -> bool:
        """The step's forward also computes the JSD to the teacher (``distill.loss=jsd``)."""
        return self.needs_teacher and self.config.distill.loss == "jsd" and (self.distills or plan.kind != SFT)

    @property
    def needs_reference(self) -> bool:
        """A frozen copy of the initial policy is loaded for the KL penalty or the KL diagnostic."""
        return (self.has_rl_term and self.config.grpo.beta > 0) or self.config.train.log_reference_kl

    def agg(self, values: torch.Tensor, mask: torch.Tensor, totals: MaskTotals) -> torch.Tensor:
        """The configured aggregation (``loss.aggregation``) of ``values`` over ``mask``, normalised by
        full-batch ``totals``: SFT terms, the entropy bonus and the KL penalty."""
        return aggregate(values, mask, self.aggregation, totals=totals, max_len=self.max_len, divisor=self.token_sum_divisor)

    def policy_agg(self, values: torch.Tensor, mask: torch.Tensor, totals: MaskTotals) -> torch.Tensor:
        """The aggregation of a policy-gradient term (``loss.policy_aggregation``, default
        ``loss.aggregation``): GRPO's clipped term, LUFFY's and SRFT's RL terms."""
        return aggregate(values, mask, self.policy_aggregation, totals=totals, max_len=self.max_len, divisor=self.token_sum_divisor)

    # ------------------------------------------------------------------ what the trainer calls

    def prepare_batch(self, batch: RolloutBatch, plan: StepPlan) -> dict[str, float]:
        """``prepare`` plus the masks every batch carries (for the shared terms and diagnostics)."""
        batch.masks = {COMPLETIONS: batch.loss_mask, ROLLOUT: rollout_mask(batch), DEMO: demo_mask(batch)}
        batch.masks[SAMPLED] = batch.masks[ROLLOUT] if batch.prefix_mask is None else batch.masks[ROLLOUT] & ~batch.prefix_mask
        if self.needs_teacher:  # the KL to the teacher on correct and on incorrect rollouts (metrics)
            correct = batch.reward >= self.config.reward.correct_threshold
            batch.masks[SAMPLED_CORRECT] = batch.masks[SAMPLED] & correct.unsqueeze(-1)
            batch.masks[SAMPLED_INCORRECT] = batch.masks[SAMPLED] & ~correct.unsqueeze(-1)
        batch.coefficients = {}
        metrics = self.prepare(batch, plan)
        batch.masks.setdefault(TRAINED, batch.loss_mask)
        only_rollouts = self.config.grpo.entropy_tokens == "rollouts"
        batch.masks[REGULARISED] = batch.masks[TRAINED] & batch.masks[ROLLOUT] if only_rollouts else batch.masks[TRAINED]
        return metrics

    def step_loss(
        self, batch: RolloutBatch, out: PolicyOutputs, totals: BatchTotals, plan: StepPlan
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The method's loss plus the shared RL regularisers, with the per-step diagnostics.

        For a step with an RL term (the whole run for most methods, the RL steps of two-stage and
        SASR): ``- entropy_coef * token_mean(H)`` over ``REGULARISED`` tokens, and ``beta * agg(k3)``
        over the tokens the method trains on (``loss.aggregation``, as verl's and TRL's KL terms). Neither is scaled by a method's own weights (CHORD's
        ``1 - mu`` included), as in the reference actors, which add both after the policy loss. With
        ``distill.coef > 0``, ``coef`` times the distillation term (``distillation_term``) too.
        """
        batch, out = finite_outside_completions(batch, out)
        loss, metrics = self.loss(batch, out, totals, plan)
        grpo = self.config.grpo
        if self.has_rl_term and plan.kind != SFT:
            if grpo.entropy_coef:
                # a token mean under every aggregation, as in every reference that has the bonus (LUFFY and
                # UPT masked_mean(entropy, response_mask), TRL's mean per-token entropy)
                entropy = aggregate(out.entropy, batch.masks[REGULARISED], "token_mean", totals=totals[REGULARISED])
                bonus = -grpo.entropy_coef * entropy
                loss = loss + bonus
                metrics["loss/entropy_bonus"] = bonus.detach()
            if grpo.beta > 0:
                if batch.ref_logp is None:
                    raise ValueError("grpo.beta > 0 needs reference log-probs (the trainer loads a reference model)")
                kl = self.agg(k3_kl(out.logp, batch.ref_logp), batch.masks[TRAINED], totals[TRAINED])
                loss = loss + grpo.beta * kl
                metrics["loss/kl"] = kl.detach()
            if self.config.distill.coef > 0 and not self.distills:
                term, distill_metrics = self.distillation_term(batch, out, totals)
                loss = loss + self.config.distill.coef * term
                metrics.update(distill_metrics)
        metrics.update(self.diagnostics(batch, out, totals))
        return loss, metrics

    def distillation_term(self, batch: RolloutBatch, out: PolicyOutputs, totals: BatchTotals) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """On-policy distillation over the sampled tokens (``distill`` section; ops/distill.py): the
        importance-sampled policy-gradient term of the advantages ``-kl_coef (log p_sampler - log
        p_teacher)``, the sampler's log-probs the behaviour policy (the current ones, detached, where the
        sampler records none), aggregated as the method's policy terms. Also the per-token KL estimate to
        the teacher, over all sampled tokens and over those of correct and of incorrect rollouts."""
        if self.config.distill.loss == "jsd":  # GKD: the JSD over every completion token, a token mean (TRL's batchmean)
            if out.jsd is None:
                raise ValueError("distill.loss=jsd needs the JSD from the step's forward (the trainer passes the teacher)")
            jsd = aggregate(out.jsd, batch.masks[COMPLETIONS], "token_mean", totals=totals[COMPLETIONS])
            return jsd, {"loss/distill": jsd.detach(), "distill/jsd": jsd.detach()}
        if batch.teacher_logp is None:
            raise ValueError("distillation needs the teacher's log-probs: set teacher.name_or_path")
        cfg, mask = self.config.distill, batch.masks[SAMPLED]
        behaviour = batch.sampler_logp if batch.sampler_logp is not None else behaviour_logp(batch, out)
        per_token, _ = reverse_kl_policy_terms(out.logp, behaviour, batch.teacher_logp, mask, coef=cfg.kl_coef,
                                               discount=cfg.discount, log_ratio_bound=self.config.grpo.log_ratio_bound)
        loss = self.policy_agg(per_token, mask, totals[SAMPLED])
        kl = behaviour.detach() - batch.teacher_logp
        metrics = {"loss/distill": loss.detach(), "distill/kl": masked_token_mean(kl, mask, totals[SAMPLED]),
                   # the KL of whole rollouts, the quantity distillation lowers: a token mean compares token
                   # populations that change as the student's rollouts shorten or lengthen
                   "distill/kl_per_sequence": zero_outside(kl, mask).sum() / max(totals[SAMPLED].num_seqs, 1.0)}
        for label, name in (("distill/kl_correct", SAMPLED_CORRECT), ("distill/kl_incorrect", SAMPLED_INCORRECT)):
            if totals[name].num_tokens:
                metrics[label] = masked_token_mean(kl, batch.masks[name], totals[name])
        return loss, metrics

    def diagnostics(self, batch: RolloutBatch, out: PolicyOutputs, totals: BatchTotals) -> dict[str, torch.Tensor]:
        """Token means every run logs: entropy of rollouts and of demonstrations, the probability the
        policy gives demonstration tokens (LUFFY's diagnostic), and, with reference log-probs, the
        k3 KL to the initial policy over every completion token (SASR's second signal)."""
        metrics = {}
        for label, name in (("entropy/rollout", ROLLOUT), ("entropy/demo", DEMO)):
            if totals[name].num_tokens:
                metrics[label] = masked_token_mean(out.entropy, batch.masks[name], totals[name])
        if totals[DEMO].num_tokens:
            metrics["demo/token_prob"] = masked_token_mean(out.logp.detach().exp(), batch.masks[DEMO], totals[DEMO])
        if batch.ref_logp is not None:
            kl = k3_kl(out.logp.detach(), batch.ref_logp)
            metrics["kl/initial_policy"] = masked_token_mean(kl, batch.masks[COMPLETIONS], totals[COMPLETIONS])
        if batch.sampler_logp is not None and totals[SAMPLED].num_tokens:
            metrics.update(self.mismatch_metrics(batch, out, totals))
        return metrics

    def mismatch_metrics(self, batch: RolloutBatch, out: PolicyOutputs, totals: BatchTotals) -> dict[str, torch.Tensor]:
        """The training-inference mismatch on rollout tokens: the sampler's log-probs against the
        trainer's ``pi_old`` (stored old log-probs, else the current ones before this update), as the
        mean and max absolute difference and the k3 KL(sampler || trainer); with ``grpo.rollout_is``,
        the mean importance weight and the share of tokens whose weight was truncated or masked."""
        mask, rollout = batch.masks[SAMPLED], totals[SAMPLED]
        trainer_logp = behaviour_logp(batch, out)
        abs_diff, k3 = sampler_mismatch(trainer_logp, batch.sampler_logp)
        metrics = {
            "mismatch/logp_abs_diff": masked_token_mean(abs_diff, mask, rollout),
            "mismatch/k3_kl": masked_token_mean(k3, mask, rollout),
        }
        if mask.any():  # reduced with max over micro-batches and processes (the _max suffix)
            metrics["mismatch/logp_abs_diff_max"] = abs_diff[mask].max()
        grpo = self.config.grpo
        if grpo.rollout_is != "none":
            weights = rollout_importance_weights(trainer_logp, batch.sampler_logp, mask, mode=grpo.rollout_is, cap=grpo.rollout_is_cap)
            level = grpo.rollout_is.split("_")[0]  # the uncorrected ratios at the same level: no cap
            ratios = rollout_importance_weights(trainer_logp, batch.sampler_logp, mask, mode=f"{level}_truncate", cap=float("inf"))
            changed = weights != ratios
            metrics["rollout_is/weight_mean"] = masked_token_mean(weights, mask, rollout)
            metrics["rollout_is/capped_frac"] = masked_token_mean(changed.float(), mask, rollout)
        return metrics


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Register a method by ``cls.name``, with its config section and defaults."""
    OBJECTIVES[cls.name] = cls
    register_method_section(cls.name, cls.config_section, cls.defaults)
    return cls


def build_objective(config: Config) -> Objective:
    if config.method not in OBJECTIVES:
        close = difflib.get_close_matches(config.method, list(OBJECTIVES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"unknown method '{config.method}' (known: {', '.join(sorted(OBJECTIVES))}){hint}")
    return OBJECTIVES[config.method](config)
