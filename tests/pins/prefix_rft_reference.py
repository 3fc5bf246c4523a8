"""Pinned outputs of Prefix-RFT's reference functions on seeded random inputs, for tests/test_prefix_rft.py.

The reference is ZeroYuHuang/prefix_rft at commit 5f5d2a1fb18f0efb6d5ac51839b2750490cefaf8: the three
prefix advantage estimators of ``recipe/prefix_rft/core_algos.py``, ``reshape_func`` of
``recipe/prefix_rft/dp_actor.py`` and the controllers of ``recipe/prefix_rft/scheduler/global_step.py``.
Their code needs verl only for imports the functions pinned here do not use, so this script lifts the
functions' source out of the files (``ast``) and runs it with torch and numpy alone.

    python tests/pins/prefix_rft_reference.py /path/to/prefix_rft   # a clone at that commit; writes prefix_rft.json
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

COMMIT = "5f5d2a1fb18f0efb6d5ac51839b2750490cefaf8"
OUT = Path(__file__).with_name("prefix_rft.json")
ESTIMATORS = {"grpo": "compute_grpo_prefix_outcome_advantage", "dr_grpo": "compute_dr_grpo_prefix_outcome_advantage",
              "dr_grpo_v2": "compute_dr_grpo_prefix_v2_outcome_advantage"}
UNPREFIXED_UID = "0000-0000-0000-0000"


def source(repo: Path, path: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "show", f"{COMMIT}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def function_source(text: str, name: str) -> str:
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return textwrap.dedent(ast.get_source_segment(text, node))
    raise KeyError(name)


def reference(repo: Path) -> dict:
    namespace = {"torch": torch, "np": np, "defaultdict": defaultdict}
    algos = source(repo, "recipe/prefix_rft/core_algos.py")
    for name in ESTIMATORS.values():
        exec(function_source(algos, name), namespace)
    exec(function_source(source(repo, "recipe/prefix_rft/dp_actor.py"), "reshape_func"), namespace)
    controllers: dict = {}
    exec(source(repo, "recipe/prefix_rft/scheduler/global_step.py"), controllers)
    namespace["controllers"] = controllers
    return namespace


def advantage_case(seed: int) -> dict:
    """3 prompts; prompt k has 2-4 unprefixed rollouts and 1-3 prefixes with 1-2 rollouts each."""
    g = np.random.default_rng(seed)
    prompt, prefix, n_per = [], [], int(g.integers(1, 3))
    next_prefix = 0
    for p in range(3):
        for _ in range(int(g.integers(2, 5))):
            prompt.append(p)
            prefix.append(-1)
        for _ in range(int(g.integers(1, 4))):
            for _ in range(n_per):
                prompt.append(p)
                prefix.append(next_prefix)
            next_prefix += 1
    rewards = g.integers(0, 2, size=len(prompt)).astype(float).tolist()
    return {"prompt": prompt, "prefix": prefix, "reward": rewards, "rollouts_per_prefix": n_per}


def reference_advantages(ns: dict, case: dict, estimator: str, width: int = 6) -> list[list[float]]:
    n = len(case["prompt"])
    token_rewards = torch.zeros(n, width)
    token_rewards[:, -1] = torch.tensor(case["reward"])
    response_mask = torch.ones(n, width)
    prefix_mask = torch.zeros(n, width)
    prefix_mask[[i for i in range(n) if case["prefix"][i] >= 0], :2] = 1  # the first 2 tokens: the prefix
    uid = np.array([f"q{p}" for p in case["prompt"]], dtype=object)
    prefix_uid = np.array([UNPREFIXED_UID if q < 0 else f"p{q}" for q in case["prefix"]], dtype=object)
    advantages, _ = ns[ESTIMATORS[estimator]](token_rewards, response_mask, prefix_mask, uid, prefix_uid,
                                              case["rollouts_per_prefix"])
    return advantages.tolist()


def reshape_case(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    n, t = 5, 7
    prefix_lengths = [3, 0, 5, 2, 0]
    demo_lengths = [6, 4, 7, 5, 5]
    prefix_mask = torch.arange(t).unsqueeze(0) < torch.tensor(prefix_lengths).unsqueeze(1)
    relpos = torch.zeros(n, t)
    for row, (length, demo) in enumerate(zip(prefix_lengths, demo_lengths)):
        relpos[row, :length] = torch.arange(1, length + 1) / demo
    return {
        "advantages": (torch.randn(n, t, generator=g)).tolist(),
        "logp": (-0.05 - 2.0 * torch.rand(n, t, generator=g)).tolist(),
        "old_logp": (-0.05 - 2.0 * torch.rand(n, t, generator=g)).tolist(),
        "entropy": (0.1 + 2.0 * torch.rand(n, t, generator=g)).tolist(),
        "prefix_mask": prefix_mask.tolist(),
        "relative_position": relpos.tolist(),
        "position_low": 0.2, "position_high": 0.9,
    }


class _Fraction:
    def __init__(self, value):
        self.value_ = value

    def value(self, **kwargs):
        return self.value_


def reference_reshape(ns: dict, case: dict, reshaper: str, fraction: float) -> dict:
    actor = type("Actor", (), {})()
    actor.reshapers = [reshaper]
    actor.ent_mask_ratio_ctrl = _Fraction(fraction)
    adv, logp = ns["reshape_func"](
        actor, torch.tensor(case["advantages"]), torch.tensor(case["logp"]), torch.tensor(case["prefix_mask"]),
        global_step=1, old_log_prob=torch.tensor(case["old_logp"]), entropy=torch.tensor(case["entropy"]),
        prefix_relpos=torch.tensor(case["relative_position"]), prefix_ctrl_low=case["position_low"],
        prefix_ctrl_high=case["position_high"], response_mask=torch.ones(len(case["advantages"]), 7))
    return {"advantages": adv.tolist(), "logp": logp.tolist()}


CONTROLLERS = [
    ("const", {"init": 0.3}),
    ("linear_decay", {"init": 0.95, "target": 0.05, "n_steps": 40, "warmup_ratio": 0.1}),
    ("cosine_decay", {"init": 0.95, "target": 0.05, "n_steps": 40, "warmup_ratio": 0.0}),
    ("cosine_decay", {"init": 0.1, "target": 0.9, "n_steps": 30, "warmup_ratio": 0.2}),
]
STEPS = [0, 1, 3, 4, 10, 20, 29, 30, 31, 40, 44, 45, 60]


def reference_controllers(ns: dict) -> list[dict]:
    out = []
    for kind, kwargs in CONTROLLERS:
        ctrl = ns["controllers"]["CTRL_MAPPING"][kind](**kwargs)
        out.append({"kind": kind, "kwargs": kwargs, "values": [float(ctrl.value(global_step=s)) for s in STEPS]})
        delayed = ns["controllers"]["DelayWrapper"](ctrl, delay_steps=5, delay_val=0.8)
        out.append({"kind": kind, "kwargs": kwargs, "delay": [5, 0.8],
                    "values": [float(delayed.value(global_step=s)) for s in STEPS]})
    return out


def reference_beta(ns: dict) -> dict:
    """BetaSampler draws np.random.beta(alpha, beta) from numpy's global state; pinned with the draws."""
    low = ns["controllers"]["ConstController"](init=0.05)
    high = ns["controllers"]["CosineDecayController"](init=0.95, target=0.05, n_steps=40)
    sampler = ns["controllers"]["BetaSampler"](low, high, alpha=2.0, beta=3.0)
    np.random.seed(7)
    values = [sampler.value(global_step=s) for s in STEPS]
    np.random.seed(7)
    draws = [float(np.random.beta(2.0, 3.0)) for _ in STEPS]
    return {"alpha": 2.0, "beta": 3.0, "draws": draws, "values": [[float(v) for v in value] for value in values]}


def pins(repo: Path) -> dict:
    ns = reference(repo)
    cases = [advantage_case(seed) for seed in range(4)]
    reshapes = [reshape_case(seed) for seed in range(2)]
    return {
        "commit": COMMIT,
        "advantages": [{"case": c, "estimator": e, "token_advantages": reference_advantages(ns, c, e)}
                       for c in cases for e in ESTIMATORS],
        "reshapes": [{"case": c, "reshaper": r, "fraction": f, "out": reference_reshape(ns, c, r, f)}
                     for c in reshapes
                     for r, f in [("identity", 0.0), ("importance_sampling", 0.0), ("luffy", 0.0), ("silu", 0.0),
                                  ("relu", 0.0), ("entropy", 0.8), ("entropy", 0.5), ("entropy_low", 0.5),
                                  ("position", 0.0)]],
        "steps": STEPS,
        "controllers": reference_controllers(ns),
        "beta": reference_beta(ns),
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(pins(Path(sys.argv[1])), indent=None) + "\n")
    print(f"wrote {OUT}")
