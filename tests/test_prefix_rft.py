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
