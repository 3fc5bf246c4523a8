"""ReLIFT: RL interleaved with online fine-tuning on the hardest questions (Ma et al. 2025, arXiv 2506.07527,
"Learning What Reinforcement Learning Can't: Interleaved Online Fine-Tuning for Hardest Questions").
Reference: TheRoadQaQ/ReLIFT @ eb95454, ``relift/verl/verl/relift/``: ``trainer.py`` (``fit``: the
``solve_none`` buffer and the SFT update after the RL update), ``actor.py`` (``sft_update_policy``),
``core_algos.py`` (``compute_sft_loss``), ``fsdp_worker.py`` (``actor_sft_optimizer``).

Every step is a GRPO step (grpo.py) on the step's prompts: ``group.num_generations`` rollouts each, no
demonstrations. Then, in the same step, after the RL update:

1. The step's unsolved prompts, those none of whose rollouts is correct, go to the front of a buffer,
   in the order of the global batch: the newest step first (``DataProto.concat([buffer_batch,
   sft_buffer_batch])``).
2. When the buffer holds at least ``sft_prompts`` prompts, the first ``sft_prompts`` (the newest) are
   taken out and the policy is fine-tuned on their demonstrations; the rest stay buffered. At most one
   fine-tuning update per step (the reference tests ``if len(buffer) >= sft_data_size``, not ``while``).

The fine-tuning loss (``sft_update_policy``) over the demonstration tokens:

    L_FT = token_mean(-logp_t) - sft_entropy_coef * token_mean(H_t)

It is made by an AdamW of its own (``actor_sft_optimizer``: its own moments, the run's betas, eps and
weight decay) at the constant rate ``sft_learning_rate`` (the reference gives that optimizer no
schedule), clipped at ``sft_max_grad_norm``. The trainer runs it (objectives/interleaved.py): the
buffer holds training-set indices, gathered from every process in global order, and is part of this
objective's checkpointed state, so a resumed run, and a run on any process count, makes the same
choices. The RL update carries the run's own settings (``grpo``, ``loss``, ``train`` sections).

Where this differs from the reference, and why:

- *Unsolved* is "no rollout reaches ``reward.correct_threshold``", the rule of HPT's switch and of
  the ``groups/none_correct`` metric. The reference tests that every rollout's reward equals the
  fail value (0 for its ``reward_impl_version=3``, whose math-verify reward is 0 or 1): the same
  prompts under a 0/1 reward. With a graded reward (a format bonus, partial credit) a prompt whose
  best rollout stays below the threshold is unsolved here, where the reference would never buffer it.
- The reference keeps its buffer in a local variable of ``fit``: a resumed run starts it empty.
  Here it is checkpointed, with the fine-tuning optimizer's moments.
- ``L_FT`` is a token mean over the whole fine-tuning batch (``relift.sft_aggregation``). The
  reference takes the token mean of each micro-batch of ``sft_micro_batch_size`` rows and averages
  them, and, because ``sft_mini_batch_size`` is not divided among the GPUs, scales the loss by
  ``1 / GPUs`` (each GPU's 128 / 8 = 16 rows are 4 micro-batches, each divided by 128 / 4 = 32).
  AdamW does not see that scale, the clip does: ``recipes/paper/relift.yaml`` multiplies the clip
  by the GPU count instead.
- The fine-tuning forward uses the run's scorer, at ``rollout.temperature``; the reference's runs at
  temperature 1.0. The released scripts sample at 1.0, where the two agree.
- The run's learning-rate schedule is stepped once per step; the reference also steps the RL
  optimizer's scheduler after an SFT update, which changes nothing under its constant schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hybridrft.config.ranges import ranged
from hybridrft.config.schema import AGGREGATION_MODES
from hybridrft.objectives.base import DEMO, RL, SFT, Objective, StepPlan, register_objective
from hybridrft.objectives.grpo import group_advantage, grpo_loss
from hybridrft.objectives.interleaved import FineTuningPlan, InterleavedFineTuning, PromptOutcome
from hybridrft.ops import aggregate


@dataclass
class ReLIFTConfig:
    """The interleaved fine-tuning of ReLIFT (its ``actor.sft`` and ``actor.optim.sft`` settings)."""

    # buffered prompts per fine-tuning update: examples/math-7b/train.sh sft.sft_data_size=128 (also the
    # 1.5B and 7B scripts; relift_trainer.yaml's default is 32)
    sft_prompts: int = ranged(128, ">= 1")
    # constant learning rate of the fine-tuning AdamW: train.sh optim.sft.lr=1e-6 (relift_trainer.yaml: 1e-6)
    sft_learning_rate: float = ranged(1e-6, "> 0")
    # its gradient clip: relift_trainer.yaml sft.sft_grad_clip=1.0 (train.sh keeps it); None: not clipped
    sft_max_grad_norm: Optional[float] = ranged(1.0, "> 0")
    # entropy bonus of the fine-tuning loss, a token mean over demonstration tokens: train.sh sft.entropy_coeff=0.001
    sft_entropy_coef: float = ranged(0.001, "any")  # 0: none; negative: an entropy penalty
    # optimizer updates per fine-tuning batch: sft_data_size / sft_mini_batch_size = 128 / 128 (train.sh)
    sft_updates: int = ranged(1, ">= 1")
    sft_epochs: int = ranged(1, ">= 1")  # passes over the fine-tuning batch: train.sh sft.sft_epochs=1
    # the NLL term's aggregation: core_algos.py compute_sft_loss is masked_mean (a token mean), whatever
    # the RL loss uses (loss_remove_token_mean applies to the policy-gradient loss only)
    sft_aggregation: str = "token_mean"

    def __post_init__(self):
        if self.sft_updates > 0 and self.sft_prompts % self.sft_updates:
            raise ValueError(
                f"relift.sft_prompts ({self.sft_prompts}) must be a multiple of relift.sft_updates ({self.sft_updates}): "
                "each fine-tuning update takes whole examples"
            )
        if self.sft_aggregation not in AGGREGATION_MODES:
            raise ValueError(f"relift.sft_aggregation must be one of {', '.join(AGGREGATION_MODES)}, got {self.sft_aggregation!r}")


def unsolved(outcome: PromptOutcome, threshold: float) -> bool:
    """No rollout of the prompt is correct (reward >= ``threshold``); a prompt without rollouts is not
    judged (nothing was tried)."""
    return bool(outcome.rollout_rewards) and all(reward < threshold for reward in outcome.rollout_rewards)


@register_objective
class ReLIFTObjective(InterleavedFineTuning, Objective):
    name = "relift"
    config_section = ReLIFTConfig
    defaults = {
        "group.num_generations": 8,  # train.sh: rollout.n=8
        "group.demos_per_prompt": 1,  # the fine-tuning update trains on one demonstration per prompt (its target)
        "grpo.entropy_coef": 0.001,  # train.sh: entropy_coeff=0.001 (masked_mean over the response tokens)
    }
    summary_keys = (("relift/buffer_size", "buffer"),)

    def __init__(self, config):
        super().__init__(config)
        self.cfg = config.relift
        self.buffer: list[int] = []  # training-set indices of unsolved prompts, the newest first
        self.demos_used = 0  # examples fine-tuned on so far (the paper's share of demonstrations used)

    # ------------------------------------------------------------------ the RL step: GRPO

    def plan(self, step: int) -> StepPlan:
        return StepPlan(RL, rollouts_per_prompt=self.config.group.num_generations, demos_per_prompt=0)

    def prepare(self, batch, plan):
        if plan.kind != SFT:  # the fine-tuning batch needs no advantage: the demonstration mask is every batch's
            batch.advantage = group_advantage(batch, self.config.group)
        return {}

    def loss(self, batch, out, totals, plan):
        if plan.kind == SFT:
            return self.fine_tuning_loss(batch, out, totals)
        return grpo_loss(self, batch, out, totals)

    def fine_tuning_loss(self, batch, out, totals):
        """``L_FT`` (actor.py ``sft_update_policy``): the NLL of the demonstration tokens minus the
        entropy bonus, both over the demonstration tokens (``response_mask`` of the replaced rows)."""
        mask, count = batch.masks[DEMO], totals[DEMO]
        nll = aggregate(-out.logp, mask, self.cfg.sft_aggregation, totals=count, max_len=self.max_len, divisor=self.token_sum_divisor)
        # a token mean, as masked_mean(entropy, response_mask); with gradient, as in the reference
        bonus = -self.cfg.sft_entropy_coef * aggregate(out.entropy, mask, "token_mean", totals=count)
        return nll + bonus, {"loss/sft": nll.detach(), "loss/sft_entropy_bonus": bonus.detach()}

    # ------------------------------------------------------------------ the interleaved fine-tuning

    @property
    def fine_tuning_examples(self) -> int:
        return self.cfg.sft_prompts

    @property
    def fine_tuning_updates(self) -> int:
        return self.cfg.sft_updates

    def plan_fine_tuning(self, step: int, outcomes: list[PromptOutcome]) -> FineTuningPlan:
        threshold = self.config.reward.correct_threshold
        unsolved_now = [o.index for o in outcomes if unsolved(o, threshold)]
        self.buffer = unsolved_now + self.buffer  # newest first, each step's in global-batch order
        taken: tuple[int, ...] = ()
        if len(self.buffer) >= self.cfg.sft_prompts:
            taken, self.buffer = tuple(self.buffer[: self.cfg.sft_prompts]), self.buffer[self.cfg.sft_prompts:]
            self.demos_used += len(taken)
        info = {
            "relift/unsolved_prompts": float(len(unsolved_now)),  # added to the buffer this step
            "relift/buffer_size": float(len(self.buffer)),  # after this step's fine-tuning update, if any
            "relift/fine_tuned": 1.0 if taken else 0.0,
            "relift/demos_used": float(self.demos_used),
        }
        if not taken:
            return FineTuningPlan(info)
        update_plan = StepPlan(SFT, 0, self.config.group.demos_per_prompt, learning_rate=self.cfg.sft_learning_rate)
        return FineTuningPlan(
            info, taken, update_plan, self.cfg.sft_max_grad_norm, updates=self.cfg.sft_updates, epochs=self.cfg.sft_epochs,
        )

    def state_dict(self):
        return {"buffer": list(self.buffer), "demos_used": self.demos_used}

    def load_state_dict(self, state):
        self.buffer, self.demos_used = [int(i) for i in state["buffer"]], int(state["demos_used"])
