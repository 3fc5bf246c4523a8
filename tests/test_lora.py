"""LoRA through PEFT (``model.lora``): what trains, what the fast paths compute, what is saved, and resume.

One short SRFT run with adapters on the tiny random Llama is shared by the tests that inspect a
trained policy, its checkpoint and its final model.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_llama, shared_prompt_batch, tiny_config

from hybridrft.config import ConfigError, load_config
from hybridrft.models import load_policy, load_training_policy, model_in_folder, save_policy
from hybridrft.models.kv_cache import allow_checkpointed_cache
from hybridrft.models.loading import enable_activation_checkpointing
from hybridrft.models.lora import apply_lora, is_peft_model
from hybridrft.ops import shared_prompt_logprobs_and_entropy, token_logprobs_and_entropy
from hybridrft.rollout import NativeSampler, SamplingParams
from hybridrft.train import Trainer, read_metrics
from hybridrft.train.checkpoint import checkpoint_problems, latest_checkpoint

LORA = ["model.lora.rank=4", "model.lora.alpha=8"]
TOKENS = "Sam has 12 apples. He buys 7 more. How many apples does Sam have now?"


def _base_name(key: str) -> str:
    """A PEFT model's parameter name as the plain model names it."""
    return key.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(input_ids=ids).logits
    model.train(was_training)
    return out


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    """A finished two-step SRFT run with rank-4 adapters (final model merged, the default)."""
    output = tmp_path_factory.mktemp("lora") / "run"
    trainer = Trainer(tiny_config(tiny_model_dir, output, "method=srft", *LORA))
    result = trainer.train()
    return trainer, result


def _lora_model(tokenizer, rank: int = 4):
    """The tiny Llama with adapters whose B is random (fresh adapters add nothing, which would hide
    a path that skips them)."""
    config = load_config(overrides=[f"model.lora.rank={rank}", "model.lora.alpha=8"]).model.lora
    model = apply_lora(build_tiny_llama(tokenizer), config)
    torch.manual_seed(7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return model


# ------------------------------------------------------------------ configuration


def test_lora_keys_from_overrides_and_yaml(tmp_path):
    assert load_config().model.lora.rank == 0  # full fine-tuning unless asked
    config = load_config(
        overrides=["model.lora.rank=8", "model.lora.target_modules=[q_proj,v_proj]", "model.lora.save=adapter"]
    ).model.lora
    assert (config.rank, config.target_modules, config.save) == (8, ["q_proj", "v_proj"], "adapter")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  lora:\n    rank: 16\n    dropout: 0.05\n")
    config = load_config(recipe, ["model.lora.alpha=16"])
    assert (config.model.lora.rank, config.model.lora.dropout, config.model.lora.alpha) == (16, 0.05, 16.0)
    assert len(config.model.lora.target_modules) == 7
    with pytest.raises(ConfigError, match="did you mean 'model.lora.rank'"):
        load_config(overrides=["model.lora.rnak=8"])
    with pytest.raises(ConfigError, match="model.lora.save must be one of"):
        load_config(overrides=["model.lora.save=full"])
    with pytest.raises(ConfigError, match="model.lora.rank=-1 is not allowed: it must be an integer >= 0"):
        load_config(overrides=["model.lora.rank=-1"])


# ------------------------------------------------------------------ training


def test_only_adapters_train_and_base_weights_stay(lora_run, tiny_model_dir):
    trainer, _ = lora_run
    policy = trainer.policy
    assert is_peft_model(policy)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert sum(p.numel() for group in trainer.optimizer.param_groups for p in group["params"]) == sum(
        p.numel() for p in policy.parameters() if p.requires_grad
    )
    initial = {n: p.detach() for n, p in load_policy(str(tiny_model_dir)).named_parameters()}
    trained = {_base_name(n): p for n, p in policy.named_parameters() if not p.requires_grad}
    assert trained.keys() == initial.keys()
    for name, tensor in trained.items():
        assert torch.equal(tensor.detach().cpu(), initial[name]), f"base weight {name} changed"
    adapters_b = [p for n, p in policy.named_parameters() if ".lora_B." in n]
    assert any(p.detach().abs().sum() > 0 for p in adapters_b), "the adapters did not train"


def test_checkpoint_holds_the_adapter_only(lora_run):
    trainer, _ = lora_run
    checkpoint = latest_checkpoint(trainer.checkpoint_dir)
    folder = checkpoint / "model"
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    assert not (folder / "config.json").exists() and not list(folder.glob("model*.safetensors"))
    assert (folder / "tokenizer_config.json").is_file()
    assert checkpoint_problems(checkpoint) == []
    listed = json.loads((checkpoint / "manifest.json").read_text())["files"]
    assert "model/adapter_model.safetensors" in listed
    from safetensors.torch import load_file

    saved = load_file(folder / "adapter_model.safetensors")
    assert saved and all(".lora_A." in k or ".lora_B." in k for k in saved)  # no base weight
    trainable = sum(p.numel() for p in trainer.policy.parameters() if p.requires_grad)
    assert sum(t.numel() for t in saved.values()) == trainable

    # a run folder whose model is an adapter loads as the merged model (hybridrft eval, analyze)
    assert model_in_folder(checkpoint) == folder
    merged = load_policy(str(folder))
    assert not is_peft_model(merged)
    ids = torch.tensor([trainer.tokenizer(TOKENS).input_ids])
    torch.testing.assert_close(_logits(merged, ids), _logits(trainer.policy, ids), atol=1e-5, rtol=1e-5)


def test_final_model_is_merged_and_loads_without_peft(lora_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    trainer, result = lora_run
    final = result.final_model
    assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()
    assert not (final / "adapter_config.json").exists() and not (final / "adapter_model.safetensors").exists()
    model, info = AutoModelForCausalLM.from_pretrained(final, output_loading_info=True)
    assert not is_peft_model(model) and type(model).__name__ == "LlamaForCausalLM"
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    from safetensors import safe_open

    with safe_open(final / "model.safetensors", "pt") as f:
        assert not any("lora" in key or "base_layer" in key for key in f.keys())
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert model.state_dict().keys() == base.keys()
    assert any(not torch.equal(model.state_dict()[k], base[k]) for k in base), "the adapters were not merged"

    ids = torch.tensor([trainer.tokenizer(TOKENS).input_ids])
    torch.testing.assert_close(_logits(model, ids), _logits(trainer.policy, ids), atol=1e-5, rtol=1e-5)
    # merging wrote a copy: the policy is still unmerged, its base weights untouched
    assert not any(getattr(m, "merged", False) for m in trainer.policy.modules())


def test_adapter_save_writes_only_the_adapter(lora_run, tmp_path):
    trainer, _ = lora_run
    save_policy(trainer.policy, trainer.tokenizer, tmp_path / "adapter", merge=False)
    names = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"} <= names
    assert not names & {"config.json", "model.safetensors", "generation_config.json"}
    ids = torch.tensor([trainer.tokenizer(TOKENS).input_ids])
    loaded = load_policy(str(tmp_path / "adapter"))
    torch.testing.assert_close(_logits(loaded, ids), _logits(trainer.policy, ids), atol=1e-5, rtol=1e-5)


def test_trainer_final_model_follows_lora_save(tiny_model_dir, tmp_path):
    config = tiny_config(tiny_model_dir, tmp_path / "run", "method=sft", "train.max_steps=1", "eval.at_start=false",
                         "model.lora.save=adapter", *LORA)
    result = Trainer(config).train()
    assert (result.final_model / "adapter_model.safetensors").is_file()
    assert not (result.final_model / "model.safetensors").exists()


def test_resuming_with_other_lora_settings_is_refused(lora_run):
    trainer, _ = lora_run
    folder = latest_checkpoint(trainer.checkpoint_dir) / "model"
    config = trainer.config.model
    with pytest.raises(ValueError, match="holds a LoRA adapter but model.lora.rank is 0"):
        full = load_config(overrides=[f"model.name_or_path={config.name_or_path}"]).model
        load_training_policy(full, checkpoint=folder)
    other = load_config(overrides=[f"model.name_or_path={config.name_or_path}", "model.lora.rank=8"]).model
    with pytest.raises(ValueError, match="has rank 4"):
        load_training_policy(other, checkpoint=folder)


@pytest.mark.parametrize("method", ["srft"])
def test_resume_continues_exactly(method, tiny_model_dir, tmp_path):
    """4 steps straight against 2 steps, a checkpoint, and 2 more in a new Trainer: the same adapters
    bit for bit and the same metrics rows (as test_train.test_resume_continues_exactly)."""
    overrides = [f"method={method}", "train.max_steps=4", "train.lr_scheduler=cosine", "train.lr_warmup_steps=1",
                 "eval.size=2", "eval.at_start=false", *LORA]
    if torch.cuda.is_available():
        overrides.append("train.shared_prompt_forward=false")  # atomic adds in the masked attention's backward
    straight = Trainer(tiny_config(tiny_model_dir, tmp_path / "straight", *overrides))
    straight.train()
    first = Trainer(tiny_config(tiny_model_dir, tmp_path / "resumed", *overrides))
    first.train(stop_at=2)
    second = Trainer(tiny_config(tiny_model_dir, tmp_path / "resumed", *overrides, "train.resume=true"))
    assert second.step == 2 and is_peft_model(second.policy)
    second.train()

    a, b = straight.policy.state_dict(), second.policy.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0)

    def comparable(path):
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))}
                for r in read_metrics(path / "metrics.jsonl", kind=None)]

    assert comparable(tmp_path / "resumed") == comparable(tmp_path / "straight")


# ------------------------------------------------------------------ the fast paths on a PEFT model


def _plain_logprobs(model, input_ids, attention_mask):
    """Token log-probs and entropies from the PEFT model's own full forward (full logits)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    pad = logp.new_zeros(logp.shape[0], 1)
    return torch.cat([pad, logp], 1), torch.cat([pad, entropy], 1)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
def test_shared_prompt_forward_matches_plain_forward_on_peft(tiny_tokenizer, checkpointing):
    model = _lora_model(tiny_tokenizer)
    if checkpointing:
        enable_activation_checkpointing(model.get_base_model())
    allow_checkpointed_cache(model)
    model.train()
    batch = shared_prompt_batch(tiny_tokenizer)
    mask = batch.loss_mask
    weights = torch.randn(batch.input_ids.shape)

    def run(forward):
        model.zero_grad(set_to_none=True)
        logp, entropy = forward()
        ((logp * weights * mask).sum() + (entropy * mask).sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        assert grads and all(p.grad is None for p in model.parameters() if not p.requires_grad)
        return logp.detach(), entropy.detach(), grads

    ref = run(lambda: _plain_logprobs(model, batch.input_ids, batch.attention_mask))
    for forward in (
        lambda: token_logprobs_and_entropy(model, batch.input_ids, batch.attention_mask),
        lambda: shared_prompt_logprobs_and_entropy(model, batch.input_ids, batch.attention_mask, mask, batch.group),
    ):
        logp, entropy, grads = run(forward)
        torch.testing.assert_close(logp[mask], ref[0][mask], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(entropy[mask], ref[1][mask], atol=1e-5, rtol=1e-5)
        assert grads.keys() == ref[2].keys()
        for name, grad in ref[2].items():
            torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-4)


def test_native_sampler_logprobs_match_plain_forward_on_peft(tiny_tokenizer):
    model = _lora_model(tiny_tokenizer)
    prompts = [tiny_tokenizer(t).input_ids for t in ("Sam has 12 apples.", "What is 2x + 3 = 11?", "A box")]
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=10)
    completions = NativeSampler(model, tiny_tokenizer, batch_size=4).generate(prompts, params, seed=3)
    assert len(completions) == 9
    model.eval()
    for c in completions:
        ids = torch.tensor([prompts[c.prompt_index] + c.token_ids])
        with torch.no_grad():
            logp, _ = _plain_logprobs(model, ids, torch.ones_like(ids))
        expected = logp[0, len(prompts[c.prompt_index]):]
        torch.testing.assert_close(torch.tensor(c.logprobs), expected, atol=1e-4, rtol=1e-4)
    # the adapters are in the sampled distribution: the same seed on the base model samples otherwise
    with model.disable_adapter():
        other = NativeSampler(model, tiny_tokenizer, batch_size=4).generate(prompts, params, seed=3)
    assert [c.token_ids for c in other] != [c.token_ids for c in completions]


def test_merged_save_of_other_adapters_merges_a_copy(tiny_tokenizer, tmp_path):
    """A PEFT model built elsewhere with a LoRA variant (DoRA) is merged by PEFT on a copy."""
    import peft
    from transformers import AutoModelForCausalLM

    dora = peft.LoraConfig(r=2, target_modules=["q_proj", "down_proj"], use_dora=True)
    model = peft.get_peft_model(build_tiny_llama(tiny_tokenizer), dora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    save_policy(model, tiny_tokenizer, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    ids = torch.tensor([tiny_tokenizer(TOKENS).input_ids])
    torch.testing.assert_close(_logits(merged, ids), _logits(model, ids), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
