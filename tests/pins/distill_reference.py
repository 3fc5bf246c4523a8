"""Pinned outputs of TRL's ``generalized_jsd_loss`` and the tinker cookbook's on-policy distillation
advantage on seeded random inputs, for tests/test_distill.py.

TRL: huggingface/trl at f2cd57710ae345ea6428ae95363267fcf38a3dc8, ``trl/experimental/gkd/gkd_trainer.py``
(``GKDTrainer.generalized_jsd_loss``, a static method of torch alone). Tinker cookbook:
thinking-machines-lab/tinker-cookbook at 9dfcc3a2cf44432d621a01005073dc6d76a1e87a,
``tinker_cookbook/rl/metrics.py`` (``discounted_future_sum_vectorized``) and the advantage line of
``tinker_cookbook/distillation/train_on_policy.py`` (``incorporate_kl_penalty``). The functions'
source is lifted out of the files (``ast``) and run here without the rest of either package.

    python tests/pins/distill_reference.py TRL_CLONE TINKER_CLONE   # writes distill.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from prefix_rft_reference import function_source  # noqa: E402

TRL_COMMIT = "f2cd57710ae345ea6428ae95363267fcf38a3dc8"
TINKER_COMMIT = "9dfcc3a2cf44432d621a01005073dc6d76a1e87a"
OUT = Path(__file__).with_name("distill.json")
CASES = [(0.0, 1.0), (0.5, 1.0), (0.1, 0.7), (0.9, 2.0), (1.0, 1.0)]  # (beta, temperature)


def git_show(repo: Path, commit: str, path: str) -> str:
    import subprocess

    return subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def pins(trl: Path, tinker: Path) -> dict:
    namespace = {"torch": torch, "F": F}
    exec(function_source(git_show(trl, TRL_COMMIT, "trl/experimental/gkd/gkd_trainer.py"), "generalized_jsd_loss"), namespace)
    exec(function_source(git_show(tinker, TINKER_COMMIT, "tinker_cookbook/rl/metrics.py"), "discounted_future_sum_vectorized"),
         namespace)
    g = torch.Generator().manual_seed(0)
    student, teacher = 3 * torch.randn(2, 5, 11, generator=g), 3 * torch.randn(2, 5, 11, generator=g)
    labels = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 7, 8]])
    jsd = []
    for beta, temperature in CASES:
        s = student.clone().requires_grad_(True)
        loss = namespace["generalized_jsd_loss"](s, teacher, labels=labels, beta=beta, temperature=temperature)
        loss.backward()
        per_token = namespace["generalized_jsd_loss"](student, teacher, beta=beta, temperature=temperature,
                                                     reduction="none").sum(-1)
        jsd.append({"beta": beta, "temperature": temperature, "loss": float(loss.detach()), "per_token": per_token.tolist(),
                    "grad": s.grad.tolist()})
    values = torch.randn(7, generator=g)
    discounted = {str(gamma): namespace["discounted_future_sum_vectorized"](values, gamma).tolist() for gamma in (0.5, 0.9, 1.0)}
    return {"trl_commit": TRL_COMMIT, "tinker_commit": TINKER_COMMIT, "student": student.tolist(), "teacher": teacher.tolist(),
            "labels": labels.tolist(), "jsd": jsd, "values": values.tolist(), "discounted": discounted}


if __name__ == "__main__":
    OUT.write_text(json.dumps(pins(Path(sys.argv[1]), Path(sys.argv[2]))) + "\n")
    print(f"wrote {OUT}")
