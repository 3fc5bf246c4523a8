"""ReLIFT (objectives/relift.py): which prompts enter the buffer and in what order they leave it, the
fine-tuning update (when it runs, on which demonstrations, its loss by hand, its own optimizer and
learning rate), the RL step against GRPO's, exact resume, and two processes (DDP; FSDP2 resumed)
against one. The tiny random Llama of conftest.py; no project code is mocked."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_config
from hybridrft.config import load_config
from hybridrft.data.stream import PromptStream
from hybridrft.objectives import SFT, PromptOutcome, build_objective
from hybridrft.train import Trainer, latest_checkpoint, read_metrics
from hybridrft.train.checkpoint import safe_load


def relift(*overrides: str):
    return build_objective(load_config(overrides=["method=relift", *overrides]))


def outcome(index: int, *rewards: float) -> PromptOutcome:
    return PromptOutcome(index, tuple(rewards))


# ------------------------------------------------------------------ the buffer, by hand


def test_only_prompts_no_rollout_solved_enter_the_buffer():
    objective = relift("relift.sft_prompts=8")  # reward.correct_threshold: 1.0
    plan = objective.plan_fine_tuning(1, [
        outcome(11, 0.0, 0.0, 0.0),  # all failed: in
        outcome(12, 0.0, 1.0, 0.0),  # one correct rollout: out
        outcome(13, 0.5, 0.9, 0.99),  # graded, none reaches the threshold: in
        outcome(14, 1.0, 1.0, 1.0),  # all correct: out
        outcome(15),  # no rollouts: nothing was tried, not judged
        outcome(16, 0.0, 0.0, 0.0),  # in, after 11 and 13 (global-batch order)
    ])
    assert objective.buffer == [11, 13, 16]
    assert plan.indices == () and plan.update_plan is None
    assert plan.info == {"relift/unsolved_prompts": 3.0, "relift/buffer_size": 3.0, "relift/fine_tuned": 0.0,
                         "relift/demos_used": 0.0}


def test_correct_means_at_least_the_reward_threshold():
    objective = relift("relift.sft_prompts=8", "reward.correct_threshold=0.5")
    objective.plan_fine_tuning(1, [outcome(1, 0.49, 0.2), outcome(2, 0.49, 0.5), outcome(3, 0.0, 0.7)])
    assert objective.buffer == [1]


def test_the_newest_unsolved_prompts_leave_first_one_update_per_step():
    objective = relift("relift.sft_prompts=3", "relift.sft_learning_rate=2e-6", "relift.sft_max_grad_norm=0.5")
    fail = (0.0, 0.0)
    assert objective.plan_fine_tuning(1, [outcome(1, *fail), outcome(2, *fail)]).indices == ()
    assert objective.buffer == [1, 2]
    # step 2: its prompts go in front of step 1's; the first three leave, the oldest stays
    plan = objective.plan_fine_tuning(2, [outcome(3, *fail), outcome(4, 1.0, 0.0), outcome(5, *fail)])
    assert plan.indices == (3, 5, 1) and objective.buffer == [2]
    assert plan.update_plan.kind == SFT and plan.update_plan.demos_per_prompt == 1
    assert plan.update_plan.rollouts_per_prompt == 0 and plan.update_plan.learning_rate == 2e-6
    assert (plan.max_grad_norm, plan.updates, plan.epochs) == (0.5, 1, 1)
    assert plan.info == {"relift/unsolved_prompts": 2.0, "relift/buffer_size": 1.0, "relift/fine_tuned": 1.0,
                         "relift/demos_used": 3.0}
    # seven new unsolved prompts: one update of three (not two), the rest waits
    plan = objective.plan_fine_tuning(3, [outcome(i, *fail) for i in range(10, 17)])
    assert plan.indices == (10, 11, 12) and objective.buffer == [13, 14, 15, 16, 2]
    # a step with nothing unsolved still takes from a full buffer, the newest first
    plan = objective.plan_fine_tuning(4, [outcome(20, 1.0, 1.0)])
    assert plan.indices == (13, 14, 15) and objective.buffer == [16, 2]
    assert plan.info["relift/unsolved_prompts"] == 0.0 and plan.info["relift/demos_used"] == 9.0

    state = objective.state_dict()
    restored = relift("relift.sft_prompts=3")
    restored.load_state_dict(state)
    assert restored.buffer == [16, 2] and restored.demos_used == 9


def test_defaults_are_the_released_scripts():
    config = load_config(overrides=["method=relift"])
    cfg = config.relift
    assert (cfg.sft_prompts, cfg.sft_learning_rate, cfg.sft_max_grad_norm, cfg.sft_entropy_coef) == (128, 1e-6, 1.0, 0.001)
    assert (cfg.sft_updates, cfg.sft_epochs, cfg.sft_aggregation) == (1, 1, "token_mean")
    assert config.group.num_generations == 8 and config.grpo.entropy_coef == 0.001 and config.grpo.dual_clip is None
    with pytest.raises(ValueError, match="relift.sft_prompts"):
        load_config(overrides=["method=relift", "relift.sft_prompts=6", "relift.sft_updates=4"])


# ------------------------------------------------------------------ the fine-tuning update, on the tiny model

# brevity (conftest.py) is 1 / (1 + characters): a rollout of at most 7 characters is "correct" at 0.12, so a
# step of the random model has solved and unsolved prompts (step 1 below: prompts 20 and 3 unsolved, 5 and 12 not)
MIXED = ["reward.correct_threshold=0.12", "train.prompts_per_step=4", "train.micro_batch_size=4", "eval.at_start=false",
         "train.log_samples=100", "grpo.entropy_coef=0.001", "grpo.dual_clip=null"]


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unsolved_in_order(run: Path, step: int, prompts: list[int], threshold: float) -> list[int]:
    """The step's prompts none of whose rollouts reached ``threshold``, in global-batch order, read
    from the run's samples.jsonl (every rollout, with its group's position in the global batch)."""
    import json

    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    best = {}
    for row in rows:
        if row["step"] == step:
            best[row["group"]] = max(best.get(row["group"], -math.inf), row["reward"])
    return [prompts[p] for p in sorted(best) if best[p] < threshold]


def _hand_fine_tuning_loss(policy, trainer, indices, entropy_coef: float) -> torch.Tensor:
    """``token_mean(-logp) - c * token_mean(H)`` over the demonstration tokens of ``indices``, from
    plain full-vocabulary logits (temperature 1), each demonstration ended with the sampler's EOS."""
    nll, entropy, tokens = 0.0, 0.0, 0
    for i in indices:
        prompt = trainer.train_set.prompt_ids[i]
        demo = trainer.tokenizer(trainer.train_set.examples[i].demonstrations[0], add_special_tokens=False).input_ids
        demo = demo + [trainer.sampler.stop_token_id]
        logits = policy(torch.tensor([prompt + demo])).logits[0, len(prompt) - 1 : -1].float()
        logp = torch.log_softmax(logits, -1)
        nll = nll - logp.gather(-1, torch.tensor(demo)[:, None]).sum()
        entropy = entropy - (logp.exp() * logp).sum()
        tokens += len(demo)
    return nll / tokens - entropy_coef * (entropy / tokens)


def test_the_fine_tuning_update_follows_the_rl_update_on_the_unsolved_demonstrations(tiny_model_dir, tmp_path):
    common = [*MIXED, "train.max_steps=1", "rollout.temperature=1.0"]
    # GRPO alone: the weights and the RL moments ReLIFT's RL update must give (the next test: the same step)
    grpo = Trainer(tiny_config(tiny_model_dir, tmp_path / "grpo", "method=grpo", *common))
    grpo.train()
    trainer = Trainer(tiny_config(
        tiny_model_dir, tmp_path / "relift", "method=relift", *common, "relift.sft_prompts=2",
        "relift.sft_learning_rate=3e-3", "relift.sft_max_grad_norm=null", "relift.sft_entropy_coef=0.01",
    ))
    trainer.train()
    record = read_metrics(tmp_path / "relift" / "metrics.jsonl")[-1]

    prompts = PromptStream(len(trainer.train_set), seed=0).global_batch(4)
    unsolved = _unsolved_in_order(tmp_path / "relift", 1, prompts, 0.12)
    assert unsolved == _unsolved_in_order(tmp_path / "grpo", 1, prompts, 0.12) == [20, 3]  # the same rollouts
    assert record["relift/unsolved_prompts"] == 2 and record["relift/fine_tuned"] == 1.0
    assert record["relift/buffer_size"] == 0 and trainer.objective.buffer == []

    # the loss, by hand, on exactly those two demonstrations, under the weights the RL update left
    policy = grpo.policy
    policy.zero_grad()
    expected = _hand_fine_tuning_loss(policy, trainer, unsolved, entropy_coef=0.01)
    expected.backward()
    assert record["fine_tune/loss"] == pytest.approx(float(expected.detach()), rel=1e-5)
    nll_only = _hand_fine_tuning_loss(policy, trainer, unsolved, entropy_coef=0.0)
    assert record["fine_tune/loss/sft"] == pytest.approx(float(nll_only.detach()), rel=1e-5)
    assert record["fine_tune/loss/sft"] + record["fine_tune/loss/sft_entropy_bonus"] == pytest.approx(record["fine_tune/loss"])
    assert record["fine_tune/lr"] == 3e-3 and record["lr"] == 1e-3  # its own rate beside the run's

    # its own AdamW: one step whose first moment is (1 - beta1) times that gradient, unclipped ...
    fine_tuning = trainer.fine_tuning_optimizer
    params = fine_tuning.param_groups[0]["params"]
    hand_grads = [p.grad for p in policy.parameters()]
    assert len(params) == len(hand_grads)
    for param, grad in zip(params, hand_grads):
        state = fine_tuning.state[param]
        assert int(state["step"]) == 1
        torch.testing.assert_close(state["exp_avg"], 0.1 * grad, rtol=1e-4, atol=1e-8)
    # ... while the step optimizer's moments are the RL update's alone (GRPO's, bit for bit)
    for mine, theirs in zip(trainer.optimizer.param_groups[0]["params"], grpo.optimizer.param_groups[0]["params"]):
        assert torch.equal(trainer.optimizer.state[mine]["exp_avg"], grpo.optimizer.state[theirs]["exp_avg"])
        assert torch.equal(trainer.optimizer.state[mine]["exp_avg_sq"], grpo.optimizer.state[theirs]["exp_avg_sq"])
    # and the weights moved from GRPO's by that AdamW step at relift.sft_learning_rate
    after, before = dict(trainer.policy.named_parameters()), dict(grpo.policy.named_parameters())
    for (name, param), grad_param in zip(trainer.policy.named_parameters(), params):
        state = fine_tuning.state[grad_param]
        step = 3e-3 * (state["exp_avg"] / 0.1) / ((state["exp_avg_sq"] / 0.001).sqrt() + 1e-8)
        torch.testing.assert_close(after[name].detach(), before[name].detach() - step, rtol=1e-5, atol=1e-7)


def test_without_a_fine_tuning_update_the_step_is_grpo(tiny_model_dir, tmp_path):
    common = [*MIXED, "train.max_steps=2"]
    runs = {}
    for method in ("grpo", "relift"):
        trainer = Trainer(tiny_config(tiny_model_dir, tmp_path / method, f"method={method}", *common, "relift.sft_prompts=64"))
        trainer.train()
        runs[method] = (trainer, read_metrics(tmp_path / method / "metrics.jsonl"))
    (grpo, grpo_rows), (relift_trainer, relift_rows) = runs["grpo"], runs["relift"]
    a, b = _weights(grpo.policy), _weights(relift_trainer.policy)
    assert all(torch.equal(a[name], b[name]) for name in a)
    for mine, theirs in zip(relift_rows, grpo_rows):
        for key in ("loss", "loss/policy", "loss/entropy_bonus", "grad_norm", "reward/mean", "groups/none_correct"):
            assert mine[key] == theirs[key], key
        assert mine["relift/fine_tuned"] == 0.0 and not any(k.startswith("fine_tune/") for k in mine)
    # what ReLIFT buffered is what GRPO's log calls unsolved
    assert [r["relift/unsolved_prompts"] for r in relift_rows] == [4 * r["groups/none_correct"] for r in grpo_rows]
    assert relift_rows[-1]["relift/buffer_size"] == len(relift_trainer.objective.buffer) > 0
    assert relift_trainer.fine_tuning_optimizer is not None and not relift_trainer.fine_tuning_optimizer.state


# ------------------------------------------------------------------ resume


def test_a_resumed_run_continues_bit_for_bit(tiny_model_dir, tmp_path):
    """Every prompt unsolved (threshold 10), 2 per step, 3 per update: step 2 fine-tunes on its own two
    and step 1's first, leaving step 1's second; stopped there, the resumed run holds that one and the
    fine-tuning optimizer's moments, and step 3 fine-tunes exactly as the straight run does."""
    overrides = ["method=relift", "reward.correct_threshold=10", "relift.sft_prompts=3", "relift.sft_learning_rate=1e-3",
                 "train.max_steps=4", "train.lr_scheduler=cosine", "train.lr_warmup_steps=1"]
    if torch.cuda.is_available():  # as tests/test_train.py: the shared-prompt backward is not bitwise on CUDA
        overrides.append("train.shared_prompt_forward=false")
    straight = Trainer(tiny_config(tiny_model_dir, tmp_path / "straight", *overrides))
    straight.train()
    order = PromptStream(len(straight.train_set), seed=0).global_batch(8)
    fine_tuned = [r["relift/fine_tuned"] for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")]
    assert fine_tuned == [0.0, 1.0, 1.0, 0.0]
    assert straight.objective.buffer == [order[6], order[7]]  # step 4's, in batch order

    first = Trainer(tiny_config(tiny_model_dir, tmp_path / "resumed", *overrides))
    first.train(stop_at=2)
    assert first.objective.buffer == [order[1]]
    checkpoint = latest_checkpoint(tmp_path / "resumed" / "checkpoints")
    saved = safe_load(checkpoint / "trainer_state.pt")
    assert saved["objective"] == {"buffer": [order[1]], "demos_used": 3}
    assert {int(s["step"]) for s in saved["fine_tuning_optimizer"]["state"].values()} == {1}
    second = Trainer(tiny_config(tiny_model_dir, tmp_path / "resumed", *overrides, "train.resume=true"))
    assert second.step == 2 and second.objective.buffer == [order[1]]
    second.train()

    a, b = _weights(straight.policy), _weights(second.policy)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=0, rtol=0)
    assert second.objective.buffer == straight.objective.buffer and second.objective.demos_used == 6
    drop = ("time/", "throughput/")
    rows = [[{k: v for k, v in r.items() if not k.startswith(drop)} for r in read_metrics(out / "metrics.jsonl", kind=None)]
            for out in (tmp_path / "straight", tmp_path / "resumed")]
    assert rows[1] == rows[0]


# ------------------------------------------------------------------ two processes


def _relift_recipe(tmp_path: Path, model_dir: Path, out: Path) -> Path:
    """tests/test_scale.py's recipe for method relift: 4 prompts per step, 2 per fine-tuning update
    (one per process); at threshold 0.13 (rollouts of at most 6 characters solve) steps leave 4, 2 and 4
    prompts unsolved, so every step fine-tunes and the buffer carries prompts over."""
    from test_scale import _recipe

    path = _recipe(tmp_path, model_dir, out, "relift")
    recipe = yaml.safe_load(path.read_text())
    recipe["relift"] = {"sft_prompts": 2, "sft_learning_rate": 1e-3}
    recipe["reward"]["correct_threshold"] = 0.13
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_two_processes_compute_the_one_process_run_and_fsdp2_resumes_it(tiny_model_dir, tmp_path, monkeypatch):
    from test_scale import _assert_same_run, _launch, _launch_fsdp2, _one_process

    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # conftest:brevity, in this process too
    one, ddp, fsdp2 = tmp_path / "one", tmp_path / "ddp", tmp_path / "fsdp2"
    _one_process(_relift_recipe(tmp_path, tiny_model_dir, one))
    rows = read_metrics(one / "metrics.jsonl")
    assert [r["relift/fine_tuned"] for r in rows] == [1.0, 1.0, 1.0] and rows[1]["relift/buffer_size"] > 0

    # DDP: the same buffer, the same fine-tuning examples (each process fine-tunes on its half), the same weights
    _launch(_relift_recipe(tmp_path, tiny_model_dir, ddp), 2)
    _assert_same_run(one, ddp)

    # FSDP2, stopped after step 2 (the fine-tuning optimizer's moments saved in shards) and resumed
    recipe = _relift_recipe(tmp_path, tiny_model_dir, fsdp2)
    _launch_fsdp2(recipe, "train.max_steps=2")
    shards = fsdp2 / "checkpoints" / "step-000002" / "fine_tuning_optimizer"
    assert len(list(shards.glob("*.distcp"))) == 2
    assert safe_load(fsdp2 / "checkpoints" / "step-000002" / "trainer_state.pt")["fine_tuning_optimizer"] == "sharded"
    _launch_fsdp2(recipe, "--resume")
    _assert_same_run(one, fsdp2, kind="train")


def test_training_examples_without_a_demonstration_are_refused_up_front(tiny_model_dir, tmp_path):
    """ReLIFT may pick any prompt for fine-tuning: a demonstration missing is found when the run starts."""
    from hybridrft.data import Example

    examples = [Example(id=f"q{i}", prompt=f"What is {i}+1?", demonstrations=[] if i == 2 else [f"{i + 1}"], answer=str(i + 1))
                for i in range(4)]
    with pytest.raises(ValueError, match=r"method relift trains on demonstrations, but 1 of 4 training examples .* have none \(first: q2\)"):
        Trainer(tiny_config(tiny_model_dir, tmp_path / "run", "method=relift"), train_examples=examples)
