"""On-policy distillation: the student samples, a frozen teacher scores every token it chose, and the
student moves toward the teacher where it actually goes (Agarwal et al. 2023, GKD, arXiv 2306.13649;
the per-token reverse-KL form of Qwen3's small models and of the tinker cookbook).
Reference: thinking-machines-lab/tinker-cookbook @ 9dfcc3a, ``tinker_cookbook/distillation/train_on_policy.py``
(``incorporate_kl_penalty``: the advantages; the ``importance_sampling`` loss they are trained with).

Each step samples ``group.num_generations`` rollouts per prompt (no demonstrations). The teacher
(``teacher`` section, loaded frozen like the reference model) scores them in a forward without
gradient, and each sampled token ``t`` gets the advantage

    A_t = -kl_coef (log pi_sampler(y_t | ...) - log pi_teacher(y_t | ...))       (+ discounted later A, ``distill.discount``)

the negative of the reverse-KL estimate of the token the student chose, trained through

    loss = agg_t  -exp(log pi_theta(y_t) - log pi_sampler(y_t)) A_t

(the sampler's log-probs the behaviour policy; where the sampler records none, the current ones,
ratio 1). Rewards are scored and logged but do not enter this loss; ``distill.coef > 0`` on another
method adds ``coef`` times this term to that method's RL loss, so one run combines teacher,
demonstrations and rewards (``objectives/base.py``, ``distillation_term``).

Where this differs from the reference, and why: the cookbook adds the KL advantage to the advantages
of its environment's rewards and trains both with one importance-sampled loss; here the method alone
has no reward term, and as an add-on the KL term is a second term beside the method's own (whose
advantages are the method's: group-normalised, clipped), weighted by ``distill.coef``.
"""

from __future__ import annotations

import numpy as np
import torch

from hybridrft.objectives.base import RL, Objective, StepPlan, register_objective


@register_objective
class DistillObjective(Objective):
    name = "distill"
    distills = True
    # the cookbook's on_policy_distillation.py: group_size = 4 rollouts per prompt
    defaults = {"group.demos_per_prompt": 0, "group.num_generations": 4}

    @property
    def trains_on_demonstrations(self) -> bool:  # GKD's supervised steps distil on the demonstrations
        return self.config.distill.loss == "jsd" and self.config.distill.lmbda < 1

    @property
    def needs_demonstrations(self) -> bool:
        return self.trains_on_demonstrations

    def plan(self, step: int) -> StepPlan:
        cfg = self.config.distill
        if cfg.loss == "jsd":  # GKD: with probability lmbda the student's own samples, else the demonstrations
            on_policy = bool(np.random.default_rng([self.config.train.seed, step]).random() <= cfg.lmbda)
            info = {"distill/on_policy": float(on_policy)}
            if not on_policy:
                return StepPlan(RL, rollouts_per_prompt=0, demos_per_prompt=max(1, self.config.group.demos_per_prompt), info=info)
            return StepPlan(RL, rollouts_per_prompt=self.config.group.num_generations, demos_per_prompt=0, info=info)
        return StepPlan(RL, rollouts_per_prompt=self.config.group.num_generations, demos_per_prompt=0)

    def prepare(self, batch, plan):
        batch.advantage = torch.zeros_like(batch.reward)  # no reward term: the advantages are per token
        return {}

    def loss(self, batch, out, totals, plan):
        return self.distillation_term(batch, out, totals)
