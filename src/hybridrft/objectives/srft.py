"""SRFT: Supervised Reinforcement Fine-Tuning (Fu et al. 2025, arXiv 2506.19767, Eq. 6-13).

One stage, every step, three terms on two kinds of data. For prompt ``x`` with rollouts
``y_1..y_n ~ pi_theta`` and demonstrations ``y*_1..y*_m``:

    A          = group advantage over the augmented group {y_k} u {y*_j}       (Eq. 7)
    L_SFT_demo = w_SFT * agg(-logp_t)                 on demonstration tokens
    L_RL_demo  = agg(-A * p_t)                        on demonstration tokens, p_t = exp(logp_t)
                                                      (behaviour probability 1, no clipping;
                                                       optional shaping p/(p+gamma) as in LUFFY)
    L_RL_self  = w_RL * agg_{y+}(-logp_t) + agg_{y-}(logp_t)    on rollouts
    L          = L_SFT_demo + L_RL_demo + L_RL_self

    w_SFT = sft_coef * sg(exp(sign * H)),  sft_coef = 0.5, sign = -1
    w_RL  = rl_coef  * sg(exp(H)),         rl_coef  = 0.1

How the terms are normalised is where the sources differ (``normalisation``):

- ``joint`` (default; the public re-implementation, TsinghuaC3I/Unify-Post-Training
  ``hpt/verl/verl/mix_src/mix_core_alg.py``, ``compute_token_on_off_policy_srft_loss``, with
  ``mix_actor.py``'s ``srft`` branch, and the authors' code, a LUFFY fork): every rollout
  token and every demonstration token of ``L_RL_demo`` in one aggregation, a rollout token carrying
  ``-c * logp_t`` with ``c = w_RL`` on ``y+`` and ``c = -1`` on ``y-``; ``L_SFT_demo`` a separate
  aggregation over the demonstration tokens.
- ``separate``: each of the four parts averaged over its own tokens, as the paper writes each term
  as an expectation over its own set.

``H`` is the detached mean token entropy of the policy at the configured granularity: ``sequence``
(each sequence's own mean, as the re-implementation does; default), ``token``, or ``batch`` (one mean
over the whole update batch's tokens of that term, measured in a no-grad pass before the update).
``y+`` are the correct rollouts (reward at or above ``reward.correct_threshold``, as the
re-implementation's ``correct_answer_mask``); with ``positive_rule = auto``, in a group with a graded
reward (neither 0 nor the threshold) also the rollouts with positive advantage. Decided per group, and
a rollout that earned the full reward is never in ``y-``. The ``y-`` term
``+logp_t`` is unbounded below (nothing in the re-implementation's script clamps it), so the smallest
log-prob on a negative rollout is logged every step (``srft/negative_logp_min``).

With ``grpo.rollout_is`` (a sampler-trainer mismatch correction, off by default) every rollout
token's ``L_RL_self`` term is multiplied by its truncated importance weight, as the GRPO term is.

The authors' code (fyqqyf/SRFT, ``srft/verl/verl/mix_src/mix_core_alg.py`` at ``8d4e10a``, known
here from published readings of it; it could not be fetched) departs from the paper in two places,
each one option away, and ``recipes/paper/srft_code.yaml`` sets both: ``sft_entropy_sign = +1``
(its SFT weight is ``exp(+H)``, l.162-163, where Eq. 8 has ``exp(-H)``), and ``self_rollout_loss =
"advantage"``, which replaces ``L_RL_self`` by the GRPO clipped term on all rollout tokens, multiplied
by ``w_RL = 0.1 exp(H)`` on tokens of positive-advantage rollouts (l.134). The defaults follow the
paper, which is unambiguous on both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from hybridrft.config.ranges import ranged
from hybridrft.objectives.base import (
    COMPLETIONS,
    DEMO,
    MIXED,
    ROLLOUT,
    Objective,
    StepPlan,
    masked_token_mean,
    register_objective,
    sequence_mask,
)
from hybridrft.objectives.grpo import clipped_policy_terms, group_advantage, rollout_correction
from hybridrft.ops import entropy_for_weights, entropy_weight, shaped_probability

POSITIVE, NEGATIVE = "positive", "negative"


def _check(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"srft.{name} must be one of {list(choices)}, got {value!r}")


@dataclass
class SRFTConfig:
    """SRFT's weights and forms (group size and advantage options: the shared ``group`` section)."""

    sft_coef: float = ranged(0.5, ">= 0")  # w_SFT = sft_coef * exp(sft_entropy_sign * H)
    sft_entropy_sign: int = ranged(-1, "one of -1, 1")  # -1 as in the paper (Eq. 8) and the re-implementation; +1 the authors' code
    rl_coef: float = ranged(0.1, ">= 0")  # w_RL = rl_coef * exp(H)
    entropy_granularity: str = "sequence"  # sequence | token | batch
    normalisation: str = "joint"  # joint (the public re-implementation) | separate (each term over its own tokens)
    policy_shaping_gamma: Optional[float] = ranged(None, "> 0")  # f(p) = p/(p+gamma) on L_RL_demo; the re-implementation's script: 0.1
    self_rollout_loss: str = "paper"  # paper (Eq. 11-12) | advantage (the authors' code: w_RL x GRPO term on A>0 tokens)
    positive_rule: str = "auto"  # auto (per group) | reward | advantage: which rollouts are y+ (full reward: always)

    def __post_init__(self):
        _check("entropy_granularity", self.entropy_granularity, ("sequence", "token", "batch"))
        _check("normalisation", self.normalisation, ("joint", "separate"))
        _check("self_rollout_loss", self.self_rollout_loss, ("paper", "advantage"))
        _check("positive_rule", self.positive_rule, ("auto", "reward", "advantage"))


def graded_groups(batch, correct_threshold: float) -> torch.Tensor:
    """``[N]`` bool: the rows of groups in which some rollout's reward is neither 0 nor the
    correct threshold (a graded reward), each row marked with its group's verdict."""
    graded = (~batch.is_demo & (batch.reward != 0) & (batch.reward != correct_threshold)).long()
    per_group = torch.zeros(int(batch.group.max()) + 1, dtype=torch.long, device=graded.device)
    per_group.index_add_(0, batch.group, graded)
    return per_group[batch.group] > 0


def positive_rollouts(batch, rule: str, correct_threshold: float) -> torch.Tensor:
    """``[N]`` bool: the rollouts that count as ``y+`` (demonstrations are never in it).

    - ``reward``: reward at or above the threshold (the re-implementation's ``correct_answer_mask``).
    - ``advantage``: positive advantage.
    - ``auto``: decided per group: by reward in a group of 0/threshold rewards, by advantage in a
      group with a graded reward.

    Under every rule a rollout that earned the full reward is in ``y+``: an all-correct group has
    advantage 0, and ``y-`` would push its correct answers down."""
    correct = batch.reward >= correct_threshold
    if rule == "reward":
        positive = correct
    elif rule == "advantage":
        positive = correct | (batch.advantage > 0)
    elif rule == "auto":
        positive = correct | (graded_groups(batch, correct_threshold) & (batch.advantage > 0))
    else:
        raise ValueError(f"positive rule must be 'auto', 'reward' or 'advantage', got {rule!r}")
    return positive & ~batch.is_demo


@register_objective
class SRFTObjective(Objective):
    name = "srft"
    config_section = SRFTConfig
    defaults = {
        # Unify-Post-Training exp_scripts/train_srft.sh: rollout.n=8 with n_prefix=1 (7 rollouts + 1 demonstration)
        "group.num_generations": 7,
        "group.demos_per_prompt": 1,
        "group.advantage_stats": "mixed",  # Eq. 7; the script's adv_estimator=grpo groups every row by prompt
        "grpo.entropy_coef": 0.001,  # train_srft.sh: entropy_coeff=0.001 over every response token
    }
    summary_keys = (("srft/w_sft", "w_sft"), ("srft/w_rl", "w_rl"))

    def plan(self, step: int) -> StepPlan:
        group = self.config.group
        return StepPlan(MIXED, rollouts_per_prompt=group.num_generations, demos_per_prompt=group.demos_per_prompt)

    def prepare(self, batch, plan):
        cfg = self.config.srft
        threshold = self.config.reward.correct_threshold
        batch.advantage = group_advantage(batch, self.config.group, demos_in_stats=True)
        rule = "advantage" if cfg.self_rollout_loss == "advantage" else cfg.positive_rule
        positive = positive_rollouts(batch, rule, threshold)
        batch.masks[POSITIVE] = sequence_mask(positive, batch.loss_mask)
        batch.masks[NEGATIVE] = sequence_mask(~positive & ~batch.is_demo, batch.loss_mask)
        by_advantage = graded_groups(batch, threshold) if rule == "auto" else torch.full_like(batch.is_demo, rule == "advantage")
        groups = batch.group.unique()
        share = sum(bool(by_advantage[batch.group == g].any()) for g in groups) / max(len(groups), 1)
        return {"srft/positives_by_advantage": share}  # the share of the step's groups judged by advantage

    def entropy_means_needed(self, plan):
        return (DEMO, POSITIVE) if self.config.srft.entropy_granularity == "batch" else ()

    def _weight(self, entropy, totals, batch, name, *, coef, sign):
        cfg = self.config.srft
        h = entropy_for_weights(entropy, batch.masks[name], cfg.entropy_granularity, batch_mean=totals.entropy_mean.get(name))
        return entropy_weight(h, coef=coef, sign=sign)

    def loss(self, batch, out, totals, plan):
        cfg, masks = self.config.srft, batch.masks
        logp, advantage = out.logp, batch.advantage.unsqueeze(-1)
        w_sft = self._weight(out.entropy, totals, batch, DEMO, coef=cfg.sft_coef, sign=cfg.sft_entropy_sign)
        w_rl = self._weight(out.entropy, totals, batch, POSITIVE, coef=cfg.rl_coef, sign=1.0)
        metrics = {"srft/w_sft": masked_token_mean(w_sft, masks[DEMO], totals[DEMO])}
        if totals[POSITIVE].num_tokens:  # undefined (not 0) when no rollout is positive
            metrics["srft/w_rl"] = masked_token_mean(w_rl, masks[POSITIVE], totals[POSITIVE])
        if masks[NEGATIVE].any():  # reduced with min over micro-batches (the _min suffix)
            metrics["srft/negative_logp_min"] = logp.detach()[masks[NEGATIVE]].min()

        def rl_term(values, name):
            """An RL part over ``masks[name]``: joint normalisation shares one normaliser, every RL
            token of the batch; separate normalisation uses the part's own tokens."""
            normaliser = totals[COMPLETIONS] if cfg.normalisation == "joint" else totals[name]
            return self.policy_agg(values, masks[name], normaliser)

        # demonstrations: entropy-weighted SFT (always its own aggregation) and off-policy RL
        sft_demo = self.agg(w_sft * -logp, masks[DEMO], totals[DEMO])
        rl_demo = rl_term(-advantage * shaped_probability(logp, cfg.policy_shaping_gamma), DEMO)
        if cfg.self_rollout_loss == "advantage":
            per_token, _ = clipped_policy_terms(self.config.grpo, batch, out)
            rl_self = rl_term(torch.where(masks[POSITIVE], w_rl, torch.ones_like(w_rl)) * per_token, ROLLOUT)
        else:
            correction = rollout_correction(self.config.grpo, batch, out)  # grpo.rollout_is; None when off
            weighted = logp if correction is None else correction * logp
            rl_pos, rl_neg = rl_term(w_rl * -weighted, POSITIVE), rl_term(weighted, NEGATIVE)
            rl_self = rl_pos + rl_neg
            metrics["loss/rl_self_pos"] = rl_pos.detach()
            metrics["loss/rl_self_neg"] = rl_neg.detach()
        metrics.update({"loss/sft_demo": sft_demo.detach(), "loss/rl_demo": rl_demo.detach(), "loss/rl_self": rl_self.detach()})
        return sft_demo + rl_demo + rl_self, metrics
