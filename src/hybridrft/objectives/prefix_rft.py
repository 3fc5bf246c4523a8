"""Prefix-RFT: RL on rollouts that continue a prefix of a demonstration (Huang et al. 2025,
arXiv 2507.01679, "Blending Supervised and Reinforcement Fine-Tuning with Prefix Sampling").
Reference: ZeroYuHuang/prefix_rft @ 5f5d2a1, ``recipe/prefix_rft/``: ``rl_dataset.py`` (``__getitem__``,
``_get_prefix``: the prefix slots), ``scheduler/global_step.py`` (the controllers), ``core_algos.py``
(the prefix advantages, ``compute_policy_loss``), ``dp_actor.py`` (``reshape_func``).

Each prompt gets ``num_prefix`` rollout slots, ``rollouts_per_prefix`` continuations each. The first
``num_empty_prefix`` slots are ordinary rollouts. Each other slot draws one of the prompt's
demonstrations and a prefix fraction ``u`` (a Beta(alpha, beta) draw between a low and a high
controller; the paper decays the prefix fraction by a cosine from 95% to 5%), and the
policy continues the demonstration's first ``L = max(int(u |y*|), min_prefix_len)`` tokens (at most
``|y*| - 1``). A hybrid rollout is trained as one completion, prefix tokens included:

    A_i      = r_i - mean(r of its (prompt, prefix) group)               (Dr. GRPO; grpo, dr_grpo_v2: ops/prefix.py)
    A_prefix = (A_i - mean(r of the prompt's unprefixed rollouts)) / rollouts_per_prefix
    loss     = -min(rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t)  over every completion token,
               A_t = A_prefix on prefix tokens, A_i on the rollout's own tokens

after the prefix tokens are reshaped (``reshapers``, ops/prefix.py ``reshape_prefix``; the paper's
entropy-based clipping is ``entropy``: the advantage of the ``entropy_mask_ratio`` lowest-entropy
prefix tokens set to 0, so only the demonstration's uncertain tokens are imitated). The prefix tokens
were not sampled by the policy; with one update per batch their ratio is 1 at the update, as the
reference's (its ``old_log_prob`` is the policy's own log-prob of the prefix).

Where this differs from the reference, and why:

- The prefix is the demonstration's tokens appended to the prompt's tokens, not text rendered with
  ``continue_final_message`` and tokenised again: the trained sequence is exactly the sampled one.
- The reference draws the Beta variates and the demonstration from numpy's global state; here from a
  generator seeded by (train seed, step, example), so a resumed run and any process count draw the
  same prefixes.
- The entropy rule ranks the prefix tokens of each micro-batch, as the reference ranks those of its
  micro-batch (``reshape_func`` runs inside the micro-batch loop); it therefore depends on how rows
  fall into micro-batches, there as here.
- The loss aggregation is Dr. GRPO's ``seq_mean_token_sum_norm`` (sum over tokens / (sequences x
  maximum length)); the reference's ``dr_grpo`` mode divides the token sum by the maximum length and
  the gradient-accumulation count only, which ``loss.aggregation=token_sum_norm`` with
  ``loss.token_sum_divisor`` reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from hybridrft.config.ranges import ranged
from hybridrft.objectives.base import COMPLETIONS, RL, Objective, StepPlan, behaviour_logp, masked_token_mean, register_objective
from hybridrft.objectives.grpo import rollout_correction
from hybridrft.ops import clipped_surrogate, policy_ratio
from hybridrft.ops.prefix import (PREFIX_ADVANTAGES, PREFIX_CONTROLLERS, PREFIX_RESHAPERS, UNPREFIXED, beta_between,
                                  controlled_value, lowest_entropy_tokens, prefix_group_advantages, prefix_length,
                                  reshape_prefix, token_advantages)
from hybridrft.rollout.prefixes import RolloutPrefix

PREFIX = "prefix"  # mask of the prefix tokens
PREFIX_CONTROLLER_KINDS = ("beta", "adaptive")


@dataclass
class PrefixRFTConfig:
    """The prefix slots, their controllers, the advantage and the reshaping of prefix tokens."""

    num_prefix: int = ranged(8, ">= 1")  # rollout slots per prompt (rl_dataset.py num_prefix)
    num_empty_prefix: int = ranged(7, ">= 1")  # of them ordinary rollouts, the baseline of the prefix advantage
    rollouts_per_prefix: int = ranged(1, ">= 1")  # continuations per slot (rollout.n of the reference)
    min_prefix_len: int = ranged(8, ">= 1")  # a drawn prefix is at least this many tokens (rl_dataset.py)
    advantage: str = "dr_grpo"  # grpo | dr_grpo | dr_grpo_v2 (core_algos.py; the paper trains with Dr. GRPO)
    # reshapers of the prefix tokens, applied in order: identity, importance_sampling, luffy, silu, relu,
    # entropy, entropy_low, position (dp_actor.py off_adv_reshaper)
    reshapers: List[str] = field(default_factory=lambda: ["entropy"])
    entropy_mask_ratio: float = ranged(0.8, "[0, 1]")  # share of prefix tokens zeroed by entropy (paper: keep the top 20%)
    shaping_gamma: float = ranged(0.1, "> 0")  # the luffy reshaper's p / (p + gamma)
    controller: str = "beta"  # beta: Beta draw between the bounds below; adaptive: per-problem, by success rate
    # the low and high bounds of the prefix fraction, each a controller (scheduler/global_step.py):
    # const | linear_decay | cosine_decay, from init to target over steps (None: train.max_steps)
    low: str = "const"
    low_init: float = ranged(0.0, "[0, 1]")
    low_target: float = ranged(0.0, "[0, 1]")
    high: str = "cosine_decay"
    high_init: float = ranged(0.95, "[0, 1]")  # the paper decays the prefix fraction from 95% ...
    high_target: float = ranged(0.05, "[0, 1]")  # ... to 5%
    schedule_steps: Optional[int] = ranged(None, ">= 1")  # n_steps of both bounds (None: train.max_steps)
    warmup_ratio: float = ranged(0.0, "[0, 1]")
    beta_alpha: float = ranged(1.0, "> 0")  # BetaSampler alpha, beta (1, 1: uniform between the bounds)
    beta_beta: float = ranged(1.0, "> 0")
    # the adaptive controller (AdaPrefix-GRPO's idea, arXiv 2607.07674): each problem's fraction moves to
    # hold its rollouts' success rate near target_success, and is withdrawn (0) once the problem is solved
    # at that rate without a prefix
    target_success: float = ranged(0.5, "(0, 1)")
    adaptive_step: float = ranged(0.1, "(0, 1]")
    adaptive_init: float = ranged(0.5, "[0, 1]")

    def __post_init__(self):
        if self.num_prefix >= 1 and self.num_empty_prefix > self.num_prefix:  # (the ranges are checked on their own)
            raise ValueError(f"prefix_rft.num_empty_prefix ({self.num_empty_prefix}) cannot exceed num_prefix ({self.num_prefix})")
        if self.advantage not in PREFIX_ADVANTAGES:
            raise ValueError(f"prefix_rft.advantage must be one of {', '.join(PREFIX_ADVANTAGES)}, got {self.advantage!r}")
        for name in self.reshapers:
            if name not in PREFIX_RESHAPERS:
                raise ValueError(f"prefix_rft.reshapers: unknown {name!r} (known: {', '.join(PREFIX_RESHAPERS)})")
        for key in ("low", "high"):
            if getattr(self, key) not in PREFIX_CONTROLLERS:
                raise ValueError(f"prefix_rft.{key} must be one of {', '.join(PREFIX_CONTROLLERS)}, got {getattr(self, key)!r}")
        if self.controller not in PREFIX_CONTROLLER_KINDS:
            raise ValueError(f"prefix_rft.controller must be one of {', '.join(PREFIX_CONTROLLER_KINDS)}, got {self.controller!r}")


@register_objective
class PrefixRFTObjective(Objective):
    name = "prefix_rft"
    config_section = PrefixRFTConfig
    defaults = {
        "group.demos_per_prompt": 0,  # demonstrations enter as prefixes, never as whole sequences
        "loss.aggregation": "seq_mean_token_sum_norm",  # Dr. GRPO (the reference's loss_agg_mode dr_grpo)
        "grpo.entropy_coef": 0.001,  # prefix_rft_trainer.yaml actor.entropy_coeff
    }
    summary_keys = (("prefix/fraction_mean", "prefix"),)
    continues_prefixes = True

    def __init__(self, config):
        super().__init__(config)
        self.cfg = config.prefix_rft
        self.adaptive_fraction: dict[int, float] = {}  # training-set index -> its prefix fraction

    @property
    def needs_demonstrations(self) -> bool:
        return self.cfg.num_empty_prefix < self.cfg.num_prefix

    @property
    def trains_on_whole_demonstrations(self) -> bool:
        """Never, whatever ``group.demos_per_prompt`` a shared recipe sets: demonstrations enter as
        prefixes of rollouts only, so Dr. GRPO's ``L_max`` is the rollout budget (the reference's
        ``loss_agg_max_tokens``), not the demonstrations' length cap."""
        return False

    @property
    def rollouts_per_prefix(self) -> int:
        return self.cfg.rollouts_per_prefix

    def plan(self, step: int) -> StepPlan:
        low, high = self.bounds(step)
        return StepPlan(RL, rollouts_per_prompt=self.cfg.num_prefix * self.cfg.rollouts_per_prefix, demos_per_prompt=0,
                        info={"prefix/low": low, "prefix/high": high})

    # ------------------------------------------------------------------ which prefixes the rollouts continue

    def bounds(self, step: int) -> tuple[float, float]:
        """The low and high controllers' values for ``step``: at ``step - 1``, as the reference's dataset
        draws a step's prefixes with the count of steps finished before it (``dataset.global_step`` is 0
        for the first batch, ``ray_trainer.py`` l.1032 and l.1308), so the first step draws from ``init``."""
        cfg = self.cfg
        steps = cfg.schedule_steps or self.config.train.max_steps
        value = lambda kind, init, target: controlled_value(  # noqa: E731
            kind, step - 1, init=init, target=target, n_steps=steps, warmup_ratio=cfg.warmup_ratio)
        return value(cfg.low, cfg.low_init, cfg.low_target), value(cfg.high, cfg.high_init, cfg.high_target)

    def rollout_prefixes(self, step: int, indices: list[int], demo_lengths: list[list[int]]) -> list[list[RolloutPrefix]]:
        """Each example's slots: ``num_empty_prefix`` unprefixed, then one drawn prefix per other slot."""
        cfg = self.cfg
        low, high = self.bounds(step)
        slots = []
        for index, lengths in zip(indices, demo_lengths):
            rng = np.random.default_rng([self.config.train.seed, step, index])
            own = [RolloutPrefix(0, 0, low=low, high=high) for _ in range(cfg.num_empty_prefix)]
            for _ in range(cfg.num_prefix - cfg.num_empty_prefix):
                if cfg.controller == "adaptive":
                    fraction = self.adaptive_fraction.get(index, cfg.adaptive_init)
                else:
                    fraction = beta_between(low, high, float(rng.beta(cfg.beta_alpha, cfg.beta_beta)))
                demo = int(rng.integers(len(lengths))) if lengths else 0
                length = prefix_length(fraction, lengths[demo] if lengths else 0, cfg.min_prefix_len)
                own.append(RolloutPrefix(demo, length, fraction=length / lengths[demo] if length else 0.0, low=low, high=high))
            slots.append(own)
        return slots

    def observe_prefix_outcomes(self, outcomes: list[tuple[int, tuple[float, ...], tuple[float, ...]]]) -> dict[str, float]:
        """The adaptive controller's update from every prompt of the step's global batch, ``(training-set
        index, rewards of its unprefixed rollouts, rewards of its prefixed ones)``: a problem's prefix
        grows while its prefixed rollouts succeed less often than ``target_success`` and shrinks while
        they succeed more often; once its unprefixed rollouts reach the target, it is withdrawn (0)."""
        cfg = self.cfg
        if cfg.controller != "adaptive":
            return {}
        threshold = self.config.reward.correct_threshold
        success = lambda rewards: sum(r >= threshold for r in rewards) / len(rewards) if rewards else None  # noqa: E731
        for index, plain, helped in outcomes:
            fraction = self.adaptive_fraction.get(index, cfg.adaptive_init)
            plain_rate, helped_rate = success(plain), success(helped)
            if plain_rate is not None and plain_rate >= cfg.target_success:
                fraction = 0.0
            elif helped_rate is not None and helped_rate < cfg.target_success:
                fraction = min(1.0, fraction + cfg.adaptive_step)
            elif helped_rate is not None and helped_rate > cfg.target_success:
                fraction = max(0.0, fraction - cfg.adaptive_step)
            self.adaptive_fraction[index] = fraction
        values = list(self.adaptive_fraction.values())
        return {"prefix/adaptive_mean": sum(values) / len(values), "prefix/adaptive_withdrawn": sum(v == 0 for v in values) / len(values)}

    # ------------------------------------------------------------------ advantages and loss

    def prepare(self, batch, plan):
        cfg = self.cfg
        if batch.prefix_id is None:
            raise ValueError("prefix_rft needs the step's prefix fields on the batch (the trainer samples prefix continuations)")
        advantage, prefix_advantage = prefix_group_advantages(
            batch.reward, batch.group, batch.prefix_id, estimator=cfg.advantage, rollouts_per_prefix=cfg.rollouts_per_prefix)
        batch.advantage = advantage
        batch.coefficients["prefix_advantage"] = prefix_advantage
        batch.masks[PREFIX] = batch.prefix_mask & batch.loss_mask
        for key in ("low", "high"):  # the position reshaper's bounds, per row so that micro-batches carry them
            batch.coefficients[f"prefix_{key}"] = torch.full_like(batch.reward, plan.info[f"prefix/{key}"])
        prefixed = batch.prefix_id != UNPREFIXED
        correct = batch.reward >= self.config.reward.correct_threshold
        metrics = {"prefix/rollouts_prefixed": float(prefixed.float().mean())}
        if prefixed.any():  # the drawn fraction: prefix tokens over the demonstration's, the last prefix position
            fractions = batch.prefix_position.max(-1).values[prefixed]
            metrics.update({"prefix/fraction_mean": float(fractions.mean()), "prefix/fraction_min": float(fractions.min()),
                            "prefix/fraction_max": float(fractions.max())})
            metrics["prefix/reward_prefixed"] = float(batch.reward[prefixed].mean())
            metrics["prefix/accuracy_prefixed"] = float(correct[prefixed].float().mean())
        if (~prefixed).any():
            metrics["prefix/reward_unprefixed"] = float(batch.reward[~prefixed].mean())
        return metrics

    def loss(self, batch, out, totals, plan):
        cfg, grpo = self.cfg, self.config.grpo
        advantages = token_advantages(batch.advantage, batch.coefficients["prefix_advantage"], batch.loss_mask.float(),
                                      batch.masks[PREFIX])
        old_logp = behaviour_logp(batch, out)
        low, high = self._position_bounds(batch)
        advantages, logp = reshape_prefix(
            cfg.reshapers, advantages, out.logp, batch.masks[PREFIX], old_logp=old_logp, entropy=out.entropy.detach(),
            entropy_fraction=cfg.entropy_mask_ratio, shaping_gamma=cfg.shaping_gamma,
            relative_position=batch.prefix_position, position_low=low, position_high=high)
        if grpo.clip:
            per_token, clipped = clipped_surrogate(logp, old_logp, advantages, eps_low=grpo.clip_eps_low,
                                                   eps_high=grpo.clip_eps_high, dual_clip=grpo.dual_clip,
                                                   log_ratio_bound=grpo.log_ratio_bound)
        else:  # the reference's enable_clip=False: prefix and continuation alike unclipped
            per_token = -policy_ratio(logp, old_logp, log_ratio_bound=grpo.log_ratio_bound) * advantages
            clipped = torch.zeros_like(per_token, dtype=torch.bool)
        weights = rollout_correction(grpo, batch, out)  # the sampled tokens only: a prefix token keeps weight 1
        if weights is not None:
            per_token = per_token * weights
        loss = self.policy_agg(per_token, batch.masks[COMPLETIONS], totals[COMPLETIONS])
        metrics = {
            "loss/policy": loss.detach(),
            "grpo/clip_fraction": masked_token_mean(clipped.float(), batch.masks[COMPLETIONS], totals[COMPLETIONS]),
        }
        if totals[PREFIX].num_tokens:
            metrics["prefix/token_share"] = torch.tensor(totals[PREFIX].num_tokens / max(totals[COMPLETIONS].num_tokens, 1.0))
            if "entropy" in cfg.reshapers or "entropy_low" in cfg.reshapers:
                lowest = lowest_entropy_tokens(out.entropy.detach(), batch.masks[PREFIX], cfg.entropy_mask_ratio)
                zeroed = lowest if "entropy" in cfg.reshapers else batch.masks[PREFIX] & ~lowest
                metrics["prefix/entropy_zeroed_share"] = masked_token_mean(zeroed.float(), batch.masks[PREFIX], totals[PREFIX])
        return loss, metrics

    def _position_bounds(self, batch) -> tuple[float | None, float | None]:
        """The position reshaper's ``a`` and ``b``: the controllers' bounds of this step (the reference's
        ``prefix_ctrl_low/high``, the batch means of the prefixed rows' bounds, which are one value)."""
        if not len(batch):
            return None, None
        return float(batch.coefficients["prefix_low"][0]), float(batch.coefficients["prefix_high"][0])

    # ------------------------------------------------------------------ state

    def state_dict(self):
        return {"adaptive_fraction": {str(k): v for k, v in self.adaptive_fraction.items()}}

    def load_state_dict(self, state):
        self.adaptive_fraction = {int(k): float(v) for k, v in state.get("adaptive_fraction", {}).items()}
