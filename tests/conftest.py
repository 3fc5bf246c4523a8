"""Shared fixtures: a tiny byte-level BPE tokenizer and a tiny random Llama, both built here.

Nothing is downloaded. The tokenizer is trained in a fraction of a second on a small corpus of
arithmetic text and carries a ChatML chat template, so chat rendering, generation, EOS handling and
training all run through the same code paths as with a real model.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Sam has 12 apples. He buys 7 more. How many apples does Sam have now?",
    "Sam starts with 12 apples. After buying 7 more he has 12 + 7 = 19. The answer is \\boxed{19}.",
    "A box holds 6 pens. How many pens are in 4 boxes? 6 * 4 = 24. The answer is \\boxed{24}.",
    "Solve the problem step by step. Put the final answer in \\boxed{}.",
    "You are a helpful assistant. #### 42 <<3*4=12>> 0123456789 + - * / = ( ) { } $ \\frac",
    "What is the value of x if 2x + 3 = 11? Subtract 3 and divide by 2, so x = 4.",
]


def build_tiny_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    hf.chat_template = CHATML_TEMPLATE
    return hf


def build_tiny_llama(tokenizer, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    return LlamaForCausalLM(config).float()


def brevity(prompts, completions, answer, **columns):
    """A graded TRL-style reward (shorter is better): a random model's rollouts then differ in
    reward, so RL terms get non-zero advantages. Loaded by the trainer as ``conftest:brevity``."""
    return [1.0 / (1.0 + len(c)) for c in completions]


def shared_prompt_batch(tokenizer):
    """Five rows over two prompts (groups interleaved, lengths 1-9, the last a demonstration): the
    shape the shared-prompt forward must handle, with random completion tokens."""
    import torch

    from hybridrft.rollout import build_rollout_batch

    torch.manual_seed(1)
    prompts = [tokenizer("Sam has 12 apples. He buys").input_ids, tokenizer("What is 2x").input_ids]
    lengths = (7, 3, 9, 1, 5)
    completions = [torch.randint(5, len(tokenizer), (n,)).tolist() for n in lengths]
    group = [0, 1, 0, 1, 0]
    return build_rollout_batch(
        [prompts[g] for g in group], completions, is_demo=[False, False, False, False, True], group=group,
        reward=[0.0] * 5, truncated=[False] * 5, pad_id=tokenizer.pad_token_id,
    )


def tiny_config(model_dir, output_dir, *overrides):
    """A run config sized for the tiny model: 2 steps of 2 prompts, 6-token completions."""
    from hybridrft.config import load_config

    return load_config(
        overrides=[
            f"model.name_or_path={model_dir}",
            f"train.output_dir={output_dir}",
            "data.builtin_size=24",
            "eval.size=4",
            "eval.max_new_tokens=6",
            "rollout.max_new_tokens=6",
            "group.num_generations=3",
            "sasr.warmup_steps=1",
            "two_stage.sft_steps=1",
            "train.prompts_per_step=2",
            "train.micro_batch_size=3",
            "train.max_steps=2",
            "train.learning_rate=1e-3",
            "reward.functions=[math,conftest:brevity]",
            "reward.weights=[1.0,1.0]",
            *overrides,
        ]
    )


def flatten_tree(tree: dict, prefix: str = "") -> dict:
    """A recipe's nested mapping as dotted keys (``{"train": {"max_steps": 2}}`` -> ``train.max_steps``)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_tree(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_value(config, dotted: str):
    """The value at a dotted key of a loaded config (free-form mappings such as data.fields included)."""
    value = config
    for part in dotted.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A folder with a tiny random Llama and its tokenizer, loadable like any checkpoint."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = build_tiny_llama(tiny_tokenizer)
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def running_in_ci() -> bool:
    """True where the environment variable ``CI`` is set to a true value, as CI services set it
    (GitHub Actions: ``CI=true``; ``.ci/run`` runs there)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def require_shared_data(path: Path) -> Path:
    """``path`` if it exists. Otherwise the test fails in CI, where the data must be present (a
    silent skip would hide that the data tests never ran), and is skipped on a developer machine."""
    if path.exists():
        return path
    message = f"shared data not found at {path} (the real-data tests need ../shared/data next to the repository)"
    if running_in_ci():
        pytest.fail(f"{message}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared_data(SHARED_DATA)


def write_tiny_recipe(path: Path, model_dir, out: Path, *, method: str = "srft", eval: dict | None = None,
                      train: dict | None = None) -> Path:
    """A recipe file for a real `hybridrft train` process on the tiny model: 4 steps of 2 prompts, 3
    rollouts of at most 6 tokens, no evaluation at the start; ``eval`` and ``train`` add or override keys."""
    import torch
    import yaml

    recipe = {
        "method": method,
        "model": {"name_or_path": str(model_dir)},
        "data": {"builtin_size": 24},
        "rollout": {"max_new_tokens": 6},
        "group": {"num_generations": 3},
        "reward": {"functions": ["math"], "weights": [1.0]},
        "eval": {"size": 4, "max_new_tokens": 6, "at_start": False, **(eval or {})},
        "train": {
            "output_dir": str(out), "max_steps": 4, "prompts_per_step": 2, "micro_batch_size": 3,
            "learning_rate": 1e-3, "num_threads": 1, "lr_scheduler": "cosine",
            # on CUDA the shared-prompt backward sums with atomic adds: exact comparisons use the plain forward
            "shared_prompt_forward": not torch.cuda.is_available(), **(train or {}),
        },
    }
    path.write_text(yaml.safe_dump(recipe))
    return path


def run_outcome(out: Path) -> tuple[str, list[dict]]:
    """A finished run's final weights (SHA-256) and its metrics rows without times: what an
    interrupted and resumed run must reproduce exactly."""
    import hashlib

    from hybridrft.train import read_metrics

    weights = hashlib.sha256((out / "final_model" / "model.safetensors").read_bytes()).hexdigest()
    drop = ("time/", "throughput/")
    rows = [{k: v for k, v in r.items() if not k.startswith(drop)} for r in read_metrics(out / "metrics.jsonl", kind=None)]
    return weights, rows
