"""Typed configuration: one dataclass per concern and one per method (as TRL has a config per trainer).

A run is described by ``Config``; YAML recipes set any subset of its fields and the command line
overrides them with dotted keys (``train.max_steps=20``). Each method reads its own section
(``sft``, ``grpo``, ``srft``, ``sasr``) plus the shared ``loss`` section; SASR alternates between the
``sft`` and ``grpo`` sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_ANSWER_INSTRUCTION = "Solve the problem step by step. Put the final answer in \\boxed{}."


def _check_choice(section: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{section}.{name} must be one of {list(choices)}, got {value!r}")


def _check_positive(section: str, name: str, value) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{section}.{name} must be > 0, got {value!r}")


@dataclass
class ModelConfig:
    """Which policy to train and how to hold it in memory."""

    name_or_path: str = DEFAULT_MODEL  # hub id, local folder, checkpoint, or "smollm2-135m-instruct"
    dtype: str = "float32"  # float32 | bfloat16 | float16 (CPUs without bf16 units: float32)
    gradient_checkpointing: bool = False
    attn_implementation: Optional[str] = None  # e.g. "sdpa", "eager", "flash_attention_2"

    def __post_init__(self):
        _check_choice("model", "dtype", self.dtype, ("float32", "bfloat16", "float16"))


@dataclass
class DataConfig:
    """Where prompts, demonstrations and gold answers come from."""

    source: str = "builtin:arithmetic"  # builtin:arithmetic | .jsonl/.json/.parquet | datasets folder | hub id
    format: str = "auto"  # auto | gsm8k | math | fields
    fields: Dict[str, str] = field(default_factory=dict)  # for format=fields: prompt, answer, demonstration, id
    split: str = "train"
    limit: Optional[int] = None  # use only the first N examples of the source
    on_error: str = "raise"  # raise | skip (skipped rows are counted and logged)
    eval_source: Optional[str] = None  # separate held-out file; default: hold out eval.size from source
    builtin_size: int = 2000  # number of generated training problems for builtin:arithmetic
    system_prompt: Optional[str] = None
    answer_instruction: Optional[str] = DEFAULT_ANSWER_INSTRUCTION
    max_prompt_tokens: int = 512  # longer prompts are skipped (and counted)
    max_demo_tokens: int = 1024  # longer demonstrations are truncated (and counted)

    def __post_init__(self):
        _check_choice("data", "format", self.format, ("auto", "gsm8k", "math", "fields"))
        _check_choice("data", "on_error", self.on_error, ("raise", "skip"))


@dataclass
class RolloutConfig:
    """Sampling of the policy's own completions (n per prompt comes from the method section)."""

    backend: str = "native"  # native (shared prompt pass, compacting KV cache) | hf (transformers.generate)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    generation_batch_size: int = 64  # sequences per generate() call

    def __post_init__(self):
        _check_choice("rollout", "backend", self.backend, ("native", "hf"))
        _check_positive("rollout", "max_new_tokens", self.max_new_tokens)


@dataclass
class RewardConfig:
    """Reward functions (registry names or "module:function"), combined as a weighted sum."""

    functions: List[str] = field(default_factory=lambda: ["math"])
    weights: List[float] = field(default_factory=lambda: [1.0])
    correct_threshold: float = 1.0  # a completion with reward >= this counts as correct (accuracy)

    def __post_init__(self):
        if len(self.functions) != len(self.weights):
            raise ValueError(
                f"reward.functions has {len(self.functions)} entries but reward.weights has {len(self.weights)}"
            )


@dataclass
class LossConfig:
    """Shared by every loss term of every method."""

    aggregation: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum | seq_mean_token_sum_norm
    max_completion_length: Optional[int] = None  # L_max for seq_mean_token_sum_norm; default rollout.max_new_tokens

    def __post_init__(self):
        _check_choice(
            "loss",
            "aggregation",
            self.aggregation,
            ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"),
        )


@dataclass
class SFTConfig:
    """Supervised fine-tuning on demonstrations: L = agg(-log p)."""

    demos_per_prompt: int = 1


@dataclass
class GRPOConfig:
    """Group Relative Policy Optimisation (Shao et al. 2024) with the DAPO / Dr. GRPO options."""

    num_generations: int = 8  # rollouts per prompt (the group size)
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2  # DAPO "clip-higher" uses 0.28
    beta: float = 0.0  # k3 KL to the initial policy; 0 loads no reference model
    entropy_coef: float = 0.0  # entropy bonus c_H
    advantage_scale: str = "group"  # group | batch | none (Dr. GRPO)

    def __post_init__(self):
        _check_choice("grpo", "advantage_scale", self.advantage_scale, ("group", "batch", "none"))
        _check_positive("grpo", "num_generations", self.num_generations)


@dataclass
class SRFTConfig:
    """SRFT (Fu et al. 2025, arXiv 2506.19767), Eq. 6-13."""

    num_generations: int = 8  # rollouts per prompt
    demos_per_prompt: int = 1
    sft_coef: float = 0.5  # w_SFT = sft_coef * exp(sft_entropy_sign * H)
    sft_entropy_sign: int = -1  # -1 as in the paper, +1 as reported for the released code
    rl_coef: float = 0.1  # w_RL = rl_coef * exp(H)
    entropy_granularity: str = "sequence"  # sequence | token | batch
    include_demos_in_stats: bool = True  # augmented group advantage (Eq. 7)
    advantage_scale: str = "group"
    policy_shaping_gamma: Optional[float] = None  # f(p) = p/(p+gamma) on demonstration RL tokens
    self_rollout_loss: str = "paper"  # paper (Eq. 11-12) | advantage (w_RL x GRPO term on A>0 tokens)
    positive_rule: str = "auto"  # auto | reward | advantage: which rollouts are y+
    clip_eps_low: float = 0.2  # used by self_rollout_loss=advantage
    clip_eps_high: float = 0.2

    def __post_init__(self):
        _check_choice("srft", "entropy_granularity", self.entropy_granularity, ("sequence", "token", "batch"))
        _check_choice("srft", "sft_entropy_sign", self.sft_entropy_sign, (-1, 1))
        _check_choice("srft", "self_rollout_loss", self.self_rollout_loss, ("paper", "advantage"))
        _check_choice("srft", "positive_rule", self.positive_rule, ("auto", "reward", "advantage"))
        _check_choice("srft", "advantage_scale", self.advantage_scale, ("group", "batch", "none"))
        _check_positive("srft", "num_generations", self.num_generations)


@dataclass
class SASRConfig:
    """SASR (Chen et al. 2025, arXiv 2505.13026), Algorithm 1. SFT steps use the ``sft`` section,
    GRPO steps the ``grpo`` section."""

    warmup_steps: int = 10  # pure SFT steps before switching starts
    gamma: float = 1.0  # p_t = G_sft / (G_sft + gamma * G_warmup)
    choice_rule: str = "grad_norm"  # name of a registered rule (hybridrft.objectives.sasr.CHOICE_RULES)

    def __post_init__(self):
        if self.warmup_steps < 1:
            raise ValueError("sasr.warmup_steps must be >= 1 (G_warmup is measured on the last warm-up step)")


@dataclass
class TwoStageConfig:
    """SFT then GRPO: ``sft_steps`` SFT steps (``sft`` section), then GRPO (``grpo`` section)."""

    sft_steps: int = 100

    def __post_init__(self):
        if self.sft_steps < 0:
            raise ValueError(f"two_stage.sft_steps must be >= 0, got {self.sft_steps}")


@dataclass
class StaticMixConfig:
    """GRPO plus a fixed-weight SFT loss on demonstrations: L = L_GRPO + mu * L_SFT."""

    mu: float = 0.1
    demos_per_prompt: int = 1


@dataclass
class LUFFYConfig:
    """LUFFY (Yan et al. 2025, arXiv 2504.14945): off-policy demonstrations inside the GRPO group."""

    num_generations: int = 8  # group size: num_generations - demos_per_group rollouts + the demonstrations
    demos_per_group: int = 1
    policy_shaping_gamma: float = 0.1  # f(p) = p / (p + gamma) on demonstration tokens
    advantage_stats: str = "rollouts"  # rollouts | group: which members define the group mean and std
    advantage_scale: str = "group"
    clip_eps_low: float = 0.2
    clip_eps_high: float = 0.2

    def __post_init__(self):
        _check_choice("luffy", "advantage_stats", self.advantage_stats, ("rollouts", "group"))
        _check_choice("luffy", "advantage_scale", self.advantage_scale, ("group", "batch", "none"))
        if not 1 <= self.demos_per_group < self.num_generations:
            raise ValueError(
                f"luffy.demos_per_group must be in [1, num_generations), got {self.demos_per_group} "
                f"with num_generations={self.num_generations}"
            )


@dataclass
class CHORDConfig:
    """CHORD (Zhang et al. 2025, arXiv 2508.11408): L = (1 - mu_t) L_GRPO + mu_t L_SFT with a
    scheduled mu_t, optionally token weights p(1-p) on the SFT term. GRPO settings: ``grpo``."""

    mu_peak: float = 0.5
    mu_valley: float = 0.02
    mu_warmup_steps: int = 0  # linear rise from valley to peak
    mu_decay_steps: int = 200  # cosine decay from peak to valley, then constant
    token_weighting: bool = False  # CHORD-phi: weight SFT tokens by sg(p (1 - p))
    demos_per_prompt: int = 1

    def __post_init__(self):
        for name in ("mu_peak", "mu_valley"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"chord.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class HPTConfig:
    """HPT (Lv et al. 2025, arXiv 2509.04419): per prompt, SFT on the demonstration when at most
    ``switch_gate`` rollouts are correct, else GRPO on the rollouts. GRPO settings: ``grpo``."""

    switch_gate: int = 0
    demos_per_prompt: int = 1


@dataclass
class EvalConfig:
    """Held-out accuracy: greedy decoding, scored with the run's reward functions."""

    size: int = 64  # held-out problems (taken from data.source unless data.eval_source is set)
    every: int = 0  # evaluate every N steps (0: only before and after training)
    at_start: bool = True
    max_new_tokens: Optional[int] = None  # default rollout.max_new_tokens
    batch_size: int = 64


@dataclass
class TrainConfig:
    """The optimisation loop."""

    output_dir: str = "runs/run"
    max_steps: int = 100
    prompts_per_step: int = 8
    micro_batch_size: int = 8  # sequences per forward/backward (gradient accumulation inside a step)
    learning_rate: float = 1e-6
    lr_scheduler: str = "constant_with_warmup"  # any transformers scheduler name
    lr_warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: Optional[float] = 1.0  # None: no clipping (the norm is still recorded)
    seed: int = 0
    logprob_chunk_size: int = 1024  # token positions projected onto the vocabulary at once (in 8192-column tiles)
    shared_prompt_forward: bool = True  # run each prompt once per micro-batch; its completions attend to it
    save_every: int = 0  # 0: save only at the end
    keep_checkpoints: int = 2
    log_samples: int = 2  # completions per step written to samples.jsonl
    report_to: List[str] = field(default_factory=list)  # accelerate trackers: tensorboard, wandb, ...
    num_threads: Optional[int] = None  # torch intra-op threads (default: all cores)
    resume: bool = False  # continue from the latest checkpoint in output_dir
    overwrite: bool = False  # start over in an output_dir that already holds checkpoints
    log_every: int = 1  # print a summary line every N steps (metrics.jsonl gets every step)

    def __post_init__(self):
        for name in ("max_steps", "prompts_per_step", "micro_batch_size", "learning_rate"):
            _check_positive("train", name, getattr(self, name))


@dataclass
class Config:
    method: str = "srft"  # a registered objective: sft | grpo | srft | sasr | two_stage | static_mix | luffy | chord | hpt
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    srft: SRFTConfig = field(default_factory=SRFTConfig)
    sasr: SASRConfig = field(default_factory=SASRConfig)
    two_stage: TwoStageConfig = field(default_factory=TwoStageConfig)
    static_mix: StaticMixConfig = field(default_factory=StaticMixConfig)
    luffy: LUFFYConfig = field(default_factory=LUFFYConfig)
    chord: CHORDConfig = field(default_factory=CHORDConfig)
    hpt: HPTConfig = field(default_factory=HPTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def max_completion_length(self) -> int:
        return self.loss.max_completion_length or self.rollout.max_new_tokens
