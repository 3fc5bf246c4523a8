"""Prefix-RFT's advantages, reshapers and controllers against its authors' code (ZeroYuHuang/prefix_rft
@ 5f5d2a1), on seeded random inputs.

The expected values are pinned in tests/pins/prefix_rft.json, made by running the reference's own
functions (``python tests/pins/prefix_rft_reference.py CLONE``); where a clone of the reference is at
hand (the fetch mirror), one test remakes them live, so the pins cannot drift from the reference.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from hybridrft.ops.prefix import (beta_between, controlled_value, prefix_group_advantages, prefix_length,
                                  relative_prefix_positions, reshape_prefix, token_advantages)

PINS = json.loads((Path(__file__).parent / "pins" / "prefix_rft.json").read_text())
MIRROR = Path("/work/.mirror/ZeroYuHuang+prefix_rft/repo")


def our_token_advantages(case: dict, estimator: str, width: int = 6) -> torch.Tensor:
    prefix = torch.tensor(case["prefix"])
    advantage, prefix_advantage = prefix_group_advantages(
        torch.tensor(case["reward"]), torch.tensor(case["prompt"]), prefix, estimator=estimator,
        rollouts_per_prefix=case["rollouts_per_prefix"])
    prefix_mask = torch.zeros(len(prefix), width, dtype=torch.bool)
    prefix_mask[prefix >= 0, :2] = True
    return token_advantages(advantage, prefix_advantage, torch.ones(len(prefix), width), prefix_mask)


@pytest.mark.parametrize("index", range(len(PINS["advantages"])))
def test_prefix_advantages_equal_the_reference_estimators(index):
    pin = PINS["advantages"][index]
    expected = torch.tensor(pin["token_advantages"])
    assert torch.allclose(our_token_advantages(pin["case"], pin["estimator"]), expected, atol=1e-6, rtol=1e-5)


def test_the_pinned_cases_cover_groups_of_one_and_of_several():
    sizes = set()
    for pin in PINS["advantages"]:
        keys = list(zip(pin["case"]["prompt"], pin["case"]["prefix"]))
        sizes |= {keys.count(k) for k in keys}
    assert 1 in sizes and max(sizes) >= 3


def test_prefix_advantage_credits_a_prefix_by_how_its_group_beat_the_unprefixed_rollouts():
    # one prompt: unprefixed rewards 0, 0, 1, 0 (mean 0.25); one prefix continued twice, both correct
    advantage, prefix_advantage = prefix_group_advantages(
        torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0]), torch.zeros(6, dtype=torch.long),
        torch.tensor([-1, -1, -1, -1, 0, 0]), estimator="dr_grpo", rollouts_per_prefix=2)
    assert advantage.tolist() == pytest.approx([-0.25, -0.25, 0.75, -0.25, 0.0, 0.0])
    assert prefix_advantage.tolist() == pytest.approx([0, 0, 0, 0, -0.125, -0.125])  # (0 - 0.25) / 2
    with pytest.raises(ValueError, match="no unprefixed one"):
        prefix_group_advantages(torch.ones(2), torch.zeros(2, dtype=torch.long), torch.tensor([0, 0]))


@pytest.mark.parametrize("index", range(len(PINS["reshapes"])))
def test_reshapers_equal_the_reference(index):
    pin = PINS["reshapes"][index]
    case = {k: torch.tensor(v) if isinstance(v, list) else v for k, v in pin["case"].items()}
    advantages, logp = reshape_prefix(
        [pin["reshaper"]], case["advantages"], case["logp"], case["prefix_mask"].bool(), old_logp=case["old_logp"],
        entropy=case["entropy"], entropy_fraction=pin["fraction"], relative_position=case["relative_position"],
        position_low=case["position_low"], position_high=case["position_high"])
    assert torch.allclose(advantages, torch.tensor(pin["out"]["advantages"]), atol=1e-6, rtol=1e-5)
    assert torch.allclose(logp, torch.tensor(pin["out"]["logp"]), atol=1e-6, rtol=1e-5)


def test_reshapers_keep_the_gradient_of_the_log_probs():
    pin = next(p for p in PINS["reshapes"] if p["reshaper"] == "luffy")
    case = pin["case"]
    logp = torch.tensor(case["logp"], requires_grad=True)
    mask = torch.tensor(case["prefix_mask"])
    _, shaped = reshape_prefix(["luffy"], torch.tensor(case["advantages"]), logp, mask,
                               old_logp=torch.tensor(case["old_logp"]))
    ratio = torch.exp(shaped - torch.tensor(case["old_logp"]))
    ratio[mask].sum().backward()
    p = logp.detach().exp()
    # d/dlogp of p / (p + 0.1) = 0.1 p / (p + 0.1)^2 on prefix tokens, and the plain ratio's gradient elsewhere
    assert torch.allclose(logp.grad[mask], (0.1 * p / (p + 0.1) ** 2)[mask], atol=1e-6)
    assert torch.all(logp.grad[~mask] == 0)


@pytest.mark.parametrize("index", range(len(PINS["controllers"])))
def test_controllers_equal_the_reference(index):
    pin = PINS["controllers"][index]
    delay_steps, delay_value = pin.get("delay", (0, 1.0))
    ours = [controlled_value(pin["kind"], step, delay_steps=delay_steps, delay_value=delay_value, **pin["kwargs"])
            for step in PINS["steps"]]
    assert ours == pytest.approx(pin["values"], abs=1e-12)


def test_the_beta_sampler_maps_its_draws_between_the_bounds_as_the_reference():
    beta = PINS["beta"]
    for step, draw, (value, low, high) in zip(PINS["steps"], beta["draws"], beta["values"]):
        bound = controlled_value("cosine_decay", step, init=0.95, target=0.05, n_steps=40)
        assert (min(0.05, bound), max(0.05, bound)) == pytest.approx((low, high))
        assert beta_between(0.05, bound, draw) == pytest.approx(value, abs=1e-12)
    assert math.isclose(beta_between(0.9, 0.1, 0.5), 0.5)


def test_prefix_lengths_follow_the_reference_rule():
    assert prefix_length(0.0, 40, 8) == 0 and prefix_length(0.5, 0, 8) == 0
    assert prefix_length(0.5, 40, 8) == 20
    assert prefix_length(0.05, 40, 8) == 8  # raised to the minimum
    assert prefix_length(0.99, 40, 8) == 39 and prefix_length(1.0, 40, 8) == 39  # the policy writes the last token
    assert relative_prefix_positions([2, 0], [4, 5], 3).tolist() == [[0.25, 0.5, 0.0], [0.0, 0.0, 0.0]]


@pytest.mark.skipif(not MIRROR.is_dir(), reason="no clone of the reference here; the pinned values stand")
def test_the_pins_are_what_the_reference_computes_now():
    import importlib.util

    spec = importlib.util.spec_from_file_location("prefix_pins", Path(__file__).parent / "pins" / "prefix_rft_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert json.loads(json.dumps(module.pins(MIRROR))) == PINS


# ------------------------------------------------------------------ continuing a prefix, on every sampler


def _continuations(sampler, tokenizer, temperature: float = 1.0):
    """Two prompts, each with an unprefixed slot and two prefixed ones (of 3 and 5 demonstration tokens)."""
    from hybridrft.rollout import SamplingParams
    from hybridrft.rollout.prefixes import RolloutPrefix, sample_prefix_continuations

    prompts = [tokenizer("Sam has 12 apples. He buys").input_ids, tokenizer("A box holds 6 pens.").input_ids]
    demos = [[tokenizer(" 3 more, so 12 + 3 = 15. The answer is 15", add_special_tokens=False).input_ids],
             [tokenizer(" Two boxes hold 2 * 6 = 12", add_special_tokens=False).input_ids]]
    slots = [[RolloutPrefix(0, 0), RolloutPrefix(0, 3), RolloutPrefix(0, 5)]] * 2
    params = SamplingParams(2, temperature, 1.0, 10)
    return prompts, demos, sample_prefix_continuations(sampler, tokenizer, prompts, demos, slots, params, [11, 12])


def _teacher_forced(model, prompts, sequences, temperature: float = 1.0):
    """The trainer's log-prob of every completion token of ``sequences``, and the batch they make."""
    from hybridrft.ops import token_logprobs_and_entropy
    from hybridrft.rollout import assemble_batch

    batch = assemble_batch(prompts, sequences, [0.0] * len(sequences), pad_id=0, with_prefixes=True)
    with torch.no_grad():
        logp, _ = token_logprobs_and_entropy(model, batch.input_ids, batch.attention_mask, temperature=temperature)
    return logp, batch


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_a_continuation_extends_exactly_the_prefix_tokens_and_scores_as_a_teacher_forced_forward(backend, tiny_tokenizer):
    from conftest import build_tiny_llama
    from hybridrft.rollout import HFSampler, NativeSampler

    model = build_tiny_llama(tiny_tokenizer, seed=3).eval()
    sampler = (NativeSampler if backend == "native" else HFSampler)(model, tiny_tokenizer, batch_size=8)
    prompts, demos, sequences = _continuations(sampler, tiny_tokenizer)
    assert len(sequences) == 2 * 3 * 2
    for s in sequences:  # the prefix is the demonstration's own tokens, the completion starts with it
        assert s.completion_ids[: s.prefix_length] == demos[s.group][0][: s.prefix_length]
        assert s.prefix_length in (0, 3, 5) and (s.prefix_id == -1) == (s.prefix_length == 0)
        assert s.text == tiny_tokenizer.decode(s.completion_ids, skip_special_tokens=True)
        assert len(s.completion_ids) <= 10  # prefix and continuation share the budget
        assert not s.truncated or len(s.completion_ids) == 10  # a truncated continuation used all the prefix left
    logp, batch = _teacher_forced(model, prompts, sequences)
    assert batch.prefix_mask.sum() == sum(s.prefix_length for s in sequences)
    sampled = batch.loss_mask & ~batch.prefix_mask
    if backend == "native":  # it records the sampling distribution's log-probs: equal to the training forward's
        torch.testing.assert_close(batch.sampler_logp[sampled], logp[sampled], atol=1e-4, rtol=0)
        assert torch.all(batch.sampler_logp[batch.prefix_mask] == 0)
    greedy = _continuations(sampler, tiny_tokenizer, temperature=0.0)[2]
    logp_greedy, batch_greedy = _teacher_forced(model, prompts, greedy, temperature=1.0)
    # greedy continuations: every sampled token is the argmax of the teacher-forced forward from prompt + prefix
    with torch.no_grad():
        logits = model(input_ids=batch_greedy.input_ids, attention_mask=batch_greedy.attention_mask).logits
    chosen = logits[:, :-1].argmax(-1)
    targets = batch_greedy.input_ids[:, 1:]
    mask = (batch_greedy.loss_mask & ~batch_greedy.prefix_mask)[:, 1:]
    assert torch.equal(chosen[mask], targets[mask])


# ------------------------------------------------------------------ the method in the trainer


def _prefix_config(model_dir, out, *overrides):
    from conftest import tiny_config

    return tiny_config(model_dir, out, "method=prefix_rft", "prefix_rft.num_prefix=3", "prefix_rft.num_empty_prefix=1",
                       "prefix_rft.min_prefix_len=2", "rollout.max_new_tokens=8", "train.max_steps=3", *overrides)


def test_a_step_continues_the_planned_prefixes_and_logs_them(tiny_model_dir, tmp_path):
    from hybridrft.train import Trainer, read_metrics

    trainer = Trainer(_prefix_config(tiny_model_dir, tmp_path / "run", "train.log_samples=100"))
    plan, batch, metrics = trainer.collect(1)
    assert len(batch) == 2 * 3 and batch.prefix_id.tolist().count(-1) == 2  # 2 prompts x (1 plain + 2 prefixed)
    for row in range(len(batch)):
        prefix = batch.prefix_mask[row]
        if batch.prefix_id[row] >= 0:
            assert prefix.any() and torch.all(batch.loss_mask[row][prefix])
        else:
            assert not prefix.any()
    assert metrics["prefix/rollouts_prefixed"] == pytest.approx(4 / 6)
    assert 0 < metrics["prefix/fraction_mean"] <= 1 and metrics["prefix/high"] == pytest.approx(0.95)
    trainer.train()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["prefix/high"] for r in rows] == pytest.approx(
        [controlled_value("cosine_decay", s, init=0.95, target=0.05, n_steps=3) for s in (0, 1, 2)])  # step - 1
    assert all("prefix/entropy_zeroed_share" in r and "prefix/reward_prefixed" in r for r in rows)
    # the entropy rule keeps the top 20% of each micro-batch's prefix tokens: 80% (rounded down) zeroed
    assert all(0 < r["prefix/entropy_zeroed_share"] <= 0.8 for r in rows)


def test_a_resumed_run_continues_bit_for_bit_with_the_adaptive_controller(tiny_model_dir, tmp_path):
    from hybridrft.train import Trainer, read_metrics
    from hybridrft.train.checkpoint import latest_checkpoint

    overrides = ("prefix_rft.controller=adaptive", "prefix_rft.reshapers=[luffy,position]", "train.save_every=1")
    straight = Trainer(_prefix_config(tiny_model_dir, tmp_path / "straight", *overrides))
    straight.train()
    assert straight.objective.adaptive_fraction  # every prompt seen has its fraction
    first = Trainer(_prefix_config(tiny_model_dir, tmp_path / "resumed", *overrides))
    first.train(stop_at=2)
    assert latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "step-000002"
    second = Trainer(_prefix_config(tiny_model_dir, tmp_path / "resumed", *overrides, "train.resume=true"))
    assert second.objective.adaptive_fraction == first.objective.adaptive_fraction
    second.train()
    for (name, a), b in zip(straight.policy.state_dict().items(), second.policy.state_dict().values()):
        torch.testing.assert_close(b, a, atol=0, rtol=0, msg=name)
    assert second.objective.adaptive_fraction == straight.objective.adaptive_fraction
    drop = ("time/", "throughput/")
    rows = [[{k: v for k, v in r.items() if not k.startswith(drop)} for r in read_metrics(out / "metrics.jsonl", kind=None)]
            for out in (tmp_path / "straight", tmp_path / "resumed")]
    assert rows[1] == rows[0]


def test_the_adaptive_controller_holds_success_near_the_target_and_withdraws_a_solved_problem():
    from hybridrft.config import load_config
    from hybridrft.objectives import build_objective

    objective = build_objective(load_config(overrides=["method=prefix_rft", "prefix_rft.controller=adaptive"]))
    objective.observe_prefix_outcomes([(0, (0.0,), (0.0,)), (1, (0.0,), (1.0,)), (2, (1.0, 1.0), (1.0,))])
    assert objective.adaptive_fraction == {0: pytest.approx(0.6), 1: pytest.approx(0.4), 2: 0.0}
    slots = objective.rollout_prefixes(1, [0, 2], [[40], [40]])
    assert [s.length for s in slots[0]][-1] == 24 and [s.length for s in slots[1]][-1] == 0  # 0.6 x 40; withdrawn


@pytest.mark.parametrize("demos_per_prompt", [0, 1])
def test_dr_grpo_divides_by_the_rollout_budget_whatever_the_demonstrations_per_prompt(demos_per_prompt):
    """Demonstrations reach Prefix-RFT only as prefixes of rollouts, so L_max is the rollout budget, as
    the reference's loss_agg_max_tokens (data.max_response_length), even where a shared recipe asks
    for a demonstration per prompt; the demonstrations' length cap (1024 by default) would scale the
    policy gradient down against the token-mean entropy bonus."""
    from hybridrft.config import load_config
    from hybridrft.objectives import build_objective

    config = load_config(overrides=["method=prefix_rft", "rollout.max_new_tokens=96",
                                    f"group.demos_per_prompt={demos_per_prompt}"])
    objective = build_objective(config)
    assert config.data.max_demo_tokens == 1024 and objective.aggregation == "seq_mean_token_sum_norm"
    assert objective.max_len == 96 and not objective.trains_on_whole_demonstrations


def test_two_processes_compute_the_one_process_run_with_prefixed_rollouts(tiny_model_dir, tmp_path, monkeypatch):
    """tests/test_scale.py's recipe as Prefix-RFT: each of the 4 prompts has 1 plain and 2 prefixed slots,
    2 continuations each. The reshapers are the ones whose result does not depend on how rows fall into
    micro-batches (the entropy rule ranks a micro-batch's prefix tokens, as the reference's does)."""
    import yaml
    from test_scale import _assert_same_run, _launch, _one_process, _recipe

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    paths = {}
    for name in ("one", "two"):
        path = _recipe(tmp_path, tiny_model_dir, tmp_path / name, "prefix_rft")
        recipe = yaml.safe_load(path.read_text())
        recipe["prefix_rft"] = {"num_prefix": 3, "num_empty_prefix": 1, "rollouts_per_prefix": 2, "min_prefix_len": 2,
                                "reshapers": ["luffy", "position"]}
        path.write_text(yaml.safe_dump(recipe))
        paths[name] = path
    _one_process(paths["one"])
    _launch(paths["two"], 2)
    _assert_same_run(tmp_path / "one", tmp_path / "two")
    from hybridrft.train import read_metrics

    assert all(r["prefix/rollouts_prefixed"] > 0 for r in read_metrics(tmp_path / "two" / "metrics.jsonl"))
