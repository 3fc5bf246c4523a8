"""DeepSpeed ZeRO-2 and ZeRO-3 through accelerate compute the one-process run, on CPU.

``accelerate launch --config_file recipes/accelerate/zero{2,3}_cpu.yaml`` (2 processes, gloo,
``DS_ACCELERATOR=cpu``) runs 3 steps of SRFT with the rollouts, metrics and weights of the
one-process run; every checkpoint's model is a full ``save_pretrained`` folder; a run stopped after
step 2 and resumed under the same engine ends with the straight run's weights, bit for bit (the
engine's checkpoint restores ZeRO's optimizer partitions, the trainer's state the RNGs).

Tolerances: those of the DDP and FSDP2 tests (metrics rel 1e-4, weights rtol 1e-4 / atol 1e-5), for
ZeRO-3 too: both only sum gradients in another order than one process (measured on this tiny model:
metrics within rel 3e-7, final weights within 6e-8 under ZeRO-2 and 1.2e-6 under ZeRO-3, where AdamW's
normalisation magnifies the reduction order's last-bit differences in near-zero gradients).

DeepSpeed is the optional ``deepspeed`` extra (``pip install 'hybridrft[deepspeed]'``). CI does not
install it, so there this module is skipped; run it where the extra is installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("deepspeed")

from test_scale import _assert_same_run, _one_process, _recipe, _rows, accelerate_launch

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "accelerate"


def _launch_deepspeed(stage: int, recipe: Path, *args: str) -> None:
    """``accelerate launch --config_file recipes/accelerate/zero{stage}_cpu.yaml`` (2 processes, gloo)."""
    accelerate_launch(["--config_file", str(CONFIGS / f"zero{stage}_cpu.yaml")], recipe, *args, env={"DS_ACCELERATOR": "cpu"})


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_computes_the_one_process_run_saves_full_models_and_resumes(stage, tiny_model_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.syspath_prepend(str(Path(__file__).parent))  # conftest:brevity, in this process too
    one, zero, resumed = tmp_path / "one", tmp_path / "zero", tmp_path / "resumed"
    _one_process(_recipe(tmp_path, tiny_model_dir, one, "srft"))
    _launch_deepspeed(stage, _recipe(tmp_path, tiny_model_dir, zero, "srft"))
    _assert_same_run(one, zero)  # sampling with ZeRO-3's gathered parameters included: the same rollouts

    # every checkpoint: a full save_pretrained model that transformers loads, the engine's state in shards
    for checkpoint in sorted((zero / "checkpoints").glob("step-*")):
        loaded = AutoModelForCausalLM.from_pretrained(checkpoint / "model")
        assert sum(p.numel() for p in loaded.parameters()) > 0
        assert len(list((checkpoint / "optimizer").rglob("*optim_states.pt"))) == 2
        assert not (checkpoint / "optimizer.pt").exists()

    # stopped after step 2 and resumed under the same engine: the straight run's weights
    recipe = _recipe(tmp_path, tiny_model_dir, resumed, "srft")
    _launch_deepspeed(stage, recipe, "train.max_steps=2")
    _launch_deepspeed(stage, recipe, "--resume")
    straight, again = (load_file(out / "final_model" / "model.safetensors") for out in (zero, resumed))
    assert all(torch.equal(straight[name], again[name]) for name in straight)
    assert _rows(resumed, "train") == _rows(zero, "train")
