"""Data parallelism adds data and changes nothing else: two processes on this CPU (``accelerate
launch --multi_gpu --num_processes 2``, gloo; FSDP2 with ``recipes/accelerate/fsdp2_cpu.yaml``) run
the step one process runs with the same global batch: the same rollouts, the same metrics and the
same weights (fp32 tolerance), and a run resumes under another process count."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hybridrft.config import load_config
from hybridrft.data.stream import PromptStream
from hybridrft.rollout import NativeSampler, SamplingParams
from hybridrft.train import Trainer, read_metrics

NOT_COMPARED = ("time/", "throughput/")


def _recipe(
    tmp_path: Path, model_dir: Path, out: Path, method: str, srft: dict | None = None, lora: dict | None = None,
    loss: dict | None = None, **train
) -> Path:
    recipe = {
        "method": method,
        "loss": loss or {},
        "srft": srft or {},
        "model": {"name_or_path": str(model_dir), "lora": lora or {}},
        "data": {"builtin_size": 24},
        "rollout": {"max_new_tokens": 6},
        "group": {"num_generations": 3},
        "sasr": {"warmup_steps": 1},
        "reward": {"functions": ["math", "conftest:brevity"], "weights": [1.0, 1.0]},
        "eval": {"size": 5, "max_new_tokens": 6, "at_start": False},
        "train": {
            "output_dir": str(out), "max_steps": 3, "prompts_per_step": 4, "micro_batch_size": 4,
            "learning_rate": 1e-3, "lr_scheduler": "constant", "save_every": 1, "keep_checkpoints": 5,
            "num_threads": 1, "log_samples": 100, **train,
        },
    }
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(launch: list[str], recipe: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``accelerate launch LAUNCH -m hybridrft train RECIPE ARGS`` on a free port; it must succeed."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1", **(env or {})}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *launch, "--main_process_port", str(_free_port()),
        "-m", "hybridrft", "train", str(recipe), *args,
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _launch(recipe: Path, processes: int, *args: str) -> None:
    """``accelerate launch`` of ``python -m hybridrft train`` as ``processes`` processes; without GPUs
    they run on CPU and talk over gloo. (``accelerate launch --cpu --num_processes N`` starts one
    process unless an MPI launcher is configured, so ``--multi_gpu`` starts them, as torchrun would.)"""
    launch = ["--multi_gpu", "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no"]
    accelerate_launch(launch, recipe, *args)


def _one_process(recipe: Path, *args: str) -> None:
    config = load_config(recipe, list(args))
    Trainer(config).train()


def _rows(out: Path, kind: str | None) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(NOT_COMPARED)} for r in read_metrics(out / "metrics.jsonl", kind=kind)]


def _assert_same_run(one: Path, two: Path, kind: str | None = None) -> None:
    # the same rollouts, in the same global order, with the same rewards
    samples = [(out / "samples.jsonl").read_text().splitlines() for out in (one, two)]
    assert samples[0] == samples[1] and len(samples[0]) > 0
    # the same metrics, every one of them, up to fp32 reductions in another order
    rows_one, rows_two = _rows(one, kind), _rows(two, kind)
    assert {r.pop("train/processes", 1) for r in rows_one} == {1} and 2 in {r.pop("train/processes", 1) for r in rows_two}
    assert [r.keys() for r in rows_one] == [r.keys() for r in rows_two]
    for a, b in zip(rows_one, rows_two):
        for key in a:
            if isinstance(a[key], float):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["step"], key)
            else:
                assert b[key] == a[key], (a["step"], key)
    # the same held-out generations, gathered from both processes' shards in problem order
    generations = [sorted((out / "eval").glob("*.jsonl"))[-1].read_text() for out in (one, two)]
    assert generations[0] == generations[1]
    # the same weights
    w1, w2 = (load_file(out / "final_model" / "model.safetensors") for out in (one, two))
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("method", ["grpo", "srft", "srft-batch-entropy", "sasr", "hpt", "grpo-lora"])
def test_two_processes_compute_the_one_process_step(method, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # conftest:brevity, in this process too
    # batch-granularity entropy weights: a mean over both processes' tokens
    srft = {"entropy_granularity": "batch"} if method == "srft-batch-entropy" else {}
    lora = {"rank": 4, "alpha": 8.0} if method == "grpo-lora" else {}
    # HPT with its script's normalisation: a token sum over a constant is the same sum on any process count
    loss = {"policy_aggregation": "token_sum_norm", "token_sum_divisor": 12} if method == "hpt" else {}
    method = method.split("-")[0]
    one, two = tmp_path / "one", tmp_path / "two"
    _one_process(_recipe(tmp_path, tiny_model_dir, one, method, srft, lora, loss))
    _launch(_recipe(tmp_path, tiny_model_dir, two, method, srft, lora, loss), 2)
    _assert_same_run(one, two)
    if method == "sasr":  # SASR's choices: warm-up SFT, then its draws, the same on both
        plans = [r["plan"] for r in read_metrics(two / "metrics.jsonl")]
        assert plans[0] == "sft" and len(plans) == 3


def test_a_two_process_run_resumes_on_one(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    straight, switched = tmp_path / "straight", tmp_path / "switched"
    _one_process(_recipe(tmp_path, tiny_model_dir, straight, "srft", updates_per_batch=2))
    recipe = _recipe(tmp_path, tiny_model_dir, switched, "srft", updates_per_batch=2)
    _launch(recipe, 2, "train.max_steps=2")
    _one_process(recipe, "train.max_steps=3", "train.resume=true")
    _assert_same_run(straight, switched, kind="train")  # the first part's final evaluation is extra


def test_prompt_shares_partition_the_global_batch():
    one = PromptStream(10, seed=3)
    halves = [PromptStream(10, seed=3, rank=r, world_size=2) for r in range(2)]
    for step in (1, 2, 3):  # crosses an epoch boundary: 12 > 10
        whole = one.next_share(step, 4)
        parts = [h.next_share(step, 4) for h in halves]
        assert parts[0].indices + parts[1].indices == whole.indices
        assert parts[0].seeds + parts[1].seeds == whole.seeds
        assert parts[0].positions == [0, 1] and parts[1].positions == [2, 3]
    with pytest.raises(ValueError, match="divide evenly"):
        PromptStream(10, seed=3, world_size=3).next_share(1, 4)


def test_a_prompts_rollouts_do_not_depend_on_its_company(tiny_model_dir, tiny_tokenizer):
    """Seeded per prompt: alone, in another order, or in smaller batches, a prompt gets the same samples."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = [tiny_tokenizer("Sam has 12 apples.").input_ids, tiny_tokenizer("What is 6 * 4?").input_ids]
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=8)
    together = NativeSampler(model, tiny_tokenizer, batch_size=6).generate(prompts, params, seeds=[11, 22])
    alone = NativeSampler(model, tiny_tokenizer, batch_size=2).generate(prompts[1:], params, seeds=[22])
    swapped = NativeSampler(model, tiny_tokenizer, batch_size=4).generate(prompts[::-1], params, seeds=[22, 11])
    texts = lambda completions: [c.token_ids for c in completions]  # noqa: E731
    assert texts(together)[3:] == texts(alone) == texts(swapped)[:3]
    assert texts(together)[:3] == texts(swapped)[3:]
    assert len({tuple(ids) for ids in texts(together)}) > 1  # and they are samples, not one greedy path


FSDP2_CPU = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "fsdp2_cpu.yaml"


def _launch_fsdp2(recipe: Path, *args: str) -> subprocess.CompletedProcess:
    """``accelerate launch --config_file recipes/accelerate/fsdp2_cpu.yaml`` (2 processes, gloo)."""
    return accelerate_launch(["--config_file", str(FSDP2_CPU)], recipe, *args)


def test_fsdp2_computes_the_one_process_run_saves_full_models_and_resumes_exactly(tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    one, sharded, resumed = tmp_path / "one", tmp_path / "sharded", tmp_path / "resumed"
    _one_process(_recipe(tmp_path, tiny_model_dir, one, "srft"))
    _launch_fsdp2(_recipe(tmp_path, tiny_model_dir, sharded, "srft"))
    _assert_same_run(one, sharded)  # sampling under sharding included: the same rollouts

    # every checkpoint: a full save_pretrained model that transformers loads, the optimizer in shards
    for checkpoint in sorted((sharded / "checkpoints").glob("step-*")):
        loaded = AutoModelForCausalLM.from_pretrained(checkpoint / "model")
        assert sum(p.numel() for p in loaded.parameters()) > 0
        assert len(list((checkpoint / "optimizer").glob("*.distcp"))) == 2 and not (checkpoint / "optimizer.pt").exists()

    # stopped after step 2 and resumed under FSDP2: exactly the straight sharded run
    recipe = _recipe(tmp_path, tiny_model_dir, resumed, "srft")
    _launch_fsdp2(recipe, "train.max_steps=2")
    _launch_fsdp2(recipe, "--resume")
    straight, again = (load_file(out / "final_model" / "model.safetensors") for out in (sharded, resumed))
    assert all(torch.equal(straight[name], again[name]) for name in straight)
    assert _rows(resumed, "train") == _rows(sharded, "train")


def test_fsdp2_with_lora_checkpoints_the_adapter_and_saves_the_one_process_merged_model(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    lora = {"rank": 4, "alpha": 8.0}
    _one_process(_recipe(tmp_path, tiny_model_dir, one, "grpo", lora=lora, max_steps=2))
    _launch_fsdp2(_recipe(tmp_path, tiny_model_dir, sharded, "grpo", lora=lora, max_steps=2))
    names = {p.name for p in (sharded / "checkpoints" / "step-000002" / "model").iterdir()}
    assert "adapter_model.safetensors" in names and "model.safetensors" not in names
    w1, w2 = (load_file(out / "final_model" / "model.safetensors") for out in (one, sharded))
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5, msg=name)
