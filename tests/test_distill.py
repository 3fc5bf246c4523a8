"""Distillation's per-token terms against their references: GKD's generalised JSD against TRL's
``generalized_jsd_loss`` (value and gradient), the on-policy reverse-KL advantage against the tinker
cookbook's formula and discounted sum. Expected values are pinned in tests/pins/distill.json, made by
running the references' own functions (``python tests/pins/distill_reference.py TRL_CLONE TINKER_CLONE``);
where the clones are at hand, one test remakes them live."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hybridrft.ops.distill import discounted_future_sum, generalized_jsd, reverse_kl_advantages

PINS = json.loads((Path(__file__).parent / "pins" / "distill.json").read_text())
TRL, TINKER = Path("/work/.mirror/huggingface+trl/repo"), Path("/work/.mirror/thinking-machines-lab+tinker-cookbook/repo")


@pytest.mark.parametrize("index", range(len(PINS["jsd"])))
def test_generalized_jsd_equals_trls_in_value_and_gradient(index):
    pin = PINS["jsd"][index]
    student = torch.tensor(PINS["student"], requires_grad=True)
    teacher = torch.tensor(PINS["teacher"])
    mask = torch.tensor(PINS["labels"]) != -100
    per_token = generalized_jsd(student, teacher, beta=pin["beta"], temperature=pin["temperature"])
    torch.testing.assert_close(per_token.detach(), torch.tensor(pin["per_token"]), atol=1e-6, rtol=1e-5)
    loss = per_token[mask].sum() / mask.sum()  # TRL's batchmean over the labelled tokens: a token mean
    assert float(loss.detach()) == pytest.approx(pin["loss"], rel=1e-5, abs=1e-7)
    loss.backward()
    torch.testing.assert_close(student.grad, torch.tensor(pin["grad"]), atol=1e-7, rtol=1e-4)


def test_generalized_jsd_is_zero_for_equal_distributions_and_symmetric_at_one_half():
    logits = torch.randn(3, 4, 9)
    assert torch.allclose(generalized_jsd(logits, logits, beta=0.5), torch.zeros(3, 4), atol=1e-6)
    other = torch.randn(3, 4, 9)
    torch.testing.assert_close(generalized_jsd(logits, other, beta=0.5), generalized_jsd(other, logits, beta=0.5))


def test_reverse_kl_advantage_is_the_negative_log_ratio_of_the_sampled_tokens():
    student = torch.tensor([[-0.5, -1.0, -2.0, -0.1]])
    teacher = torch.tensor([[-0.7, -0.2, -2.5, -3.0]])
    mask = torch.tensor([[True, True, True, False]])
    # by hand: -(s - t) = -0.2, 0.8, -0.5, and 0 outside the mask
    torch.testing.assert_close(reverse_kl_advantages(student, teacher, mask), torch.tensor([[-0.2, 0.8, -0.5, 0.0]]))
    torch.testing.assert_close(reverse_kl_advantages(student, teacher, mask, coef=2.0), torch.tensor([[-0.4, 1.6, -1.0, 0.0]]))
    discounted = reverse_kl_advantages(student, teacher, mask, discount=0.5)  # later values, halved per token
    torch.testing.assert_close(discounted, torch.tensor([[-0.2 + 0.5 * (0.8 + 0.5 * -0.5), 0.8 + 0.5 * -0.5, -0.5, 0.0]]))
    grad_student = student.clone().requires_grad_(True)
    assert not reverse_kl_advantages(grad_student, teacher, mask).requires_grad  # an advantage, detached


@pytest.mark.parametrize("gamma", ["0.5", "0.9", "1.0"])
def test_discounted_future_sum_equals_the_cookbooks(gamma):
    values = torch.tensor(PINS["values"])
    torch.testing.assert_close(discounted_future_sum(values, float(gamma)), torch.tensor(PINS["discounted"][gamma]))
    batch = torch.stack([values, values.flip(0)])  # rows are independent
    torch.testing.assert_close(discounted_future_sum(batch, float(gamma))[0], torch.tensor(PINS["discounted"][gamma]))


@pytest.mark.skipif(not (TRL.is_dir() and TINKER.is_dir()), reason="no clones of the references here; the pins stand")
def test_the_pins_are_what_the_references_compute_now():
    import importlib.util
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "pins"))
    spec = importlib.util.spec_from_file_location("distill_pins", Path(__file__).parent / "pins" / "distill_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert json.loads(json.dumps(module.pins(TRL, TINKER))) == PINS
