"""Every method's loss against its reference implementation's formula, on shared random batches.

Each ``reference_*`` function below re-derives, in this file's own code, what a public reference
computes, from the code read at the repository, path and commit named in its docstring (the versions
``docs/methods.md`` lists under "Sources"). Our objectives run on the same tensors as the trainer
runs them (``step_loss`` with full-batch totals) and must equal the reference in loss and in gradient
to float32 rounding. A later change that drifts from a reference fails here.

The batch: 3 prompts, each a group of 4 rollouts and 1 demonstration, completions of 2 to 8 tokens;
one group mixed, one where every rollout failed, one where every rollout succeeded; behaviour
log-probs set so that the importance ratios span 0.22 to 4.5 (several updates per batch).
"""

from __future__ import annotations

import math

import pytest
import torch

from hybridrft.config import load_config
from hybridrft.objectives import BatchTotals, PolicyOutputs, build_objective
from hybridrft.ops import MaskTotals
from hybridrft.rollout import RolloutBatch

T = 8  # padded completion width: the reference's eos_mask.shape[-1]
LENGTHS = [8, 5, 3, 7, 6, 2, 8, 4, 6, 5, 3, 7, 8, 2, 5]
IS_DEMO = [False, False, False, False, True] * 3
GROUP = [0] * 5 + [1] * 5 + [2] * 5
REWARD = [1.0, 0.0, 1.0, 0.0, 1.0] + [0.0, 0.0, 0.0, 0.0, 1.0] + [1.0, 1.0, 1.0, 1.0, 1.0]


def shared_batch(seed: int = 0):
    """(batch, logp, entropy): random log-probs in [-3, -0.05], entropies in [0.1, 2], and stored
    behaviour log-probs with ratios exp(logp - old_logp) in [0.22, 4.5]."""
    g = torch.Generator().manual_seed(seed)
    n = len(LENGTHS)
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)
    logp = -0.05 - 2.95 * torch.rand(n, T, generator=g)
    entropy = 0.1 + 1.9 * torch.rand(n, T, generator=g)
    log_ratio = math.log(0.22) + (math.log(4.5) - math.log(0.22)) * torch.rand(n, T, generator=g)
    batch = RolloutBatch(
        input_ids=torch.zeros(n, T, dtype=torch.long),
        attention_mask=torch.ones(n, T, dtype=torch.long),
        loss_mask=mask,
        is_demo=torch.tensor(IS_DEMO),
        group=torch.tensor(GROUP),
        reward=torch.tensor(REWARD),
        truncated=torch.zeros(n, dtype=torch.bool),
    )
    batch.old_logp = (logp - log_ratio) * mask  # zero at padding, as a stored forward leaves it
    return batch, logp * mask, entropy * mask


def ours(method: str, *overrides: str, seed: int = 0, step: int = 1):
    """Our objective's full-batch loss on the shared batch: (loss, d loss / d logp, d loss / d H, batch)."""
    objective = build_objective(load_config(overrides=[f"method={method}", *overrides]))
    batch, logp, entropy = shared_batch(seed)
    plan = objective.plan(step)
    objective.prepare_batch(batch, plan)
    logp, entropy = logp.clone().requires_grad_(True), entropy.clone().requires_grad_(True)
    totals = BatchTotals({k: MaskTotals.of(m) for k, m in batch.masks.items()})
    loss, _ = objective.step_loss(batch, PolicyOutputs(logp, entropy), totals, plan)
    loss.backward()
    return loss.detach(), logp.grad, entropy.grad, batch, plan


def reference_run(fn, batch, seed: int = 0, **kwargs):
    """Run a reference formula on fresh leaves of the shared tensors: (loss, d/d logp, d/d H)."""
    _, logp, entropy = shared_batch(seed)
    logp, entropy = logp.clone().requires_grad_(True), entropy.clone().requires_grad_(True)
    loss = fn(logp, entropy, batch, **kwargs)
    loss.backward()
    return loss.detach(), logp.grad, entropy.grad


def assert_same(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=2e-5, atol=1e-7)


def masked_mean(values, mask):
    # verl/utils/torch_functional.py masked_mean: (values * mask).sum() / mask.sum()
    mask = mask.float()
    return (values * mask).sum() / mask.sum()


def advantages_2d(batch):
    return batch.advantage.unsqueeze(-1).expand(-1, T)


# ---------------------------------------------------------------- reference formulas

def reference_verl_policy_loss(logp, entropy, batch, *, rows, clip_ratio_c=3.0, eps=0.2):
    """verl ``verl/trainer/ppo/core_algos.py`` @ b178a3c, ``compute_policy_loss_vanilla``
    (l.1160-1245) with ``agg_loss(loss_agg_mode="token-mean")`` (l.1025-1080): the log-ratio clamped
    to [-20, 20], the clipped term, and for A < 0 the dual clip ``min(-A * clip_ratio_c, .)``."""
    old, adv, mask = batch.old_logp[rows], advantages_2d(batch)[rows], batch.loss_mask[rows]
    ratio = torch.exp(torch.clamp(logp[rows] - old, -20.0, 20.0))
    clip1 = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - eps, 1 + eps))
    if clip_ratio_c is not None:
        losses = torch.where(adv < 0, torch.minimum(-adv * clip_ratio_c, clip1), clip1)
    else:
        losses = clip1
    return masked_mean(losses, mask)


def reference_upt_policy_loss(logp, old, adv, mask, *, remove_token_mean, remove_clip, eps=0.2):
    """LUFFY ``luffy/verl/verl/trainer/ppo/core_algos.py`` @ 01f4ae0 ``compute_policy_loss``
    (l.247-290; UPT ``hpt/verl/verl/trainer/ppo/core_algos.py`` @ ae332f5 is the same): no log-ratio
    clamp, no dual clip; ``loss_remove_token_mean`` divides the token sum by ``eos_mask.shape[-1]``."""
    ratio = torch.exp(logp - old)
    losses = -adv * ratio
    if not remove_clip:
        losses = torch.max(losses, -adv * torch.clamp(ratio, 1 - eps, 1 + eps))
    if remove_token_mean:
        return (losses * mask).sum() / mask.shape[-1]
    return masked_mean(losses, mask)


def reference_luffy_loss(logp, entropy, batch, *, remove_token_mean, remove_clip, entropy_coeff=0.001, eps=0.2):
    """LUFFY ``luffy/verl/verl/mix_src/mix_core_alg.py`` @ 01f4ae0,
    ``compute_token_on_off_policy_loss`` with ``off_policy_reshape="p_div_p_0.1"`` (l.79-250), and
    ``mix_actor.py``'s ``policy_loss = pg_loss - entropy_loss * entropy_coeff`` with
    ``entropy_loss = masked_mean(entropy, response_mask)``. A demonstration is a prefix row."""
    prefix = batch.is_demo.unsqueeze(-1).expand(-1, T)
    mask, adv = batch.loss_mask, advantages_2d(batch)
    ratio = torch.exp(logp - batch.old_logp)
    on = -adv * ratio
    if not remove_clip:
        on = torch.max(on, -adv * torch.clamp(ratio, 1 - eps, 1 + eps))
    p = torch.exp(logp)
    off = -adv * (p / (p + 0.1))
    pg = off * prefix.float() + on * (1 - prefix.float())
    pg_loss = (pg * mask).sum() / mask.shape[-1] if remove_token_mean else masked_mean(pg, mask)
    return pg_loss - entropy_coeff * masked_mean(entropy, mask)


def reference_upt_srft_loss(logp, entropy, batch, *, remove_token_mean, entropy_coeff=0.001):
    """UPT ``hpt/verl/verl/mix_src/mix_actor.py`` @ ae332f5, the ``srft`` branch (l.349-426), with
    ``mix_core_alg.py`` ``compute_token_on_off_policy_srft_loss`` (l.476-690) as ``train_srft.sh``
    runs it (``srft_type="paper"``, ``off_policy_reshape="p_div_p_0.1"``, ``loss_remove_clip=True``):
    per-row ``H = masked_mean(entropy, mask, axis=-1)`` detached; SFT on demonstration rows weighted
    by ``0.5 exp(-H)``, a token mean; rollouts ``-c * logp`` with ``c = 0.1 exp(H)`` if the answer
    is correct (reward 1) else ``-1``; demonstrations ``-A p / (p + 0.1)``; one pg loss over all."""
    mask, adv = batch.loss_mask, advantages_2d(batch)
    h = ((entropy * mask).sum(-1) / mask.sum(-1)).detach()
    sft_coef, on_coef = 0.5 * torch.exp(-h), 0.1 * torch.exp(h)
    demo = batch.is_demo
    sft_loss = masked_mean(-(logp * sft_coef.view(-1, 1))[demo], mask[demo])
    correct = batch.reward == 1
    on_adv = torch.where(correct.unsqueeze(-1), on_coef.view(-1, 1), torch.tensor(-1.0)).expand(-1, T)
    on = -on_adv * logp
    p = torch.exp(logp)
    off = -adv * (p / (p + 0.1))
    prefix = demo.unsqueeze(-1).float()
    pg = off * prefix + on * (1 - prefix)
    pg_loss = (pg * mask).sum() / mask.shape[-1] if remove_token_mean else masked_mean(pg, mask)
    return sft_loss + pg_loss - entropy_coeff * masked_mean(entropy, mask)


def reference_hpt_loss(logp, entropy, batch, *, rows, remove_token_mean, sft_coef=1.0, entropy_coeff=0.001):
    """UPT ``hpt/verl/verl/mix_src/mix_actor.py`` @ ae332f5, ``offline_loss_type == "sft"``
    (l.135-165): the rows that reach the actor (the RL prompts' rollouts and the switched prompts'
    demonstrations), ``pg_loss = sft_loss * sft_loss_coef + pg_loss`` with the SFT loss a token mean
    of ``-logp`` over demonstration rows and the policy loss ``compute_policy_loss`` over rollouts
    (``loss_remove_clip=True`` in ``train.sh``), minus ``entropy_coeff * masked_mean(entropy)``."""
    mask, adv = batch.loss_mask[rows], advantages_2d(batch)[rows]
    demo = batch.is_demo[rows]
    sft_loss = masked_mean(-logp[rows][demo], mask[demo])
    pg_loss = reference_upt_policy_loss(
        logp[rows][~demo], batch.old_logp[rows][~demo], adv[~demo], mask[~demo],
        remove_token_mean=remove_token_mean, remove_clip=True,
    )
    return sft_loss * sft_coef + pg_loss - entropy_coeff * masked_mean(entropy[rows], mask)


def reference_trinity_chord_loss(logp, entropy, batch, *, mu, eps=0.2, clip_ratio_c=3.0):
    """Trinity-RFT ``trinity/algorithm/policy_loss_fn/chord_policy_loss.py`` @ 0414330,
    ``MIXCHORDPolicyLossFn`` with its default ``enable_phi_function=True`` and per-micro-batch weights
    of 1 (``loss = (1 - mu) * grpo_loss + mu * sft_loss``), the GRPO term ``PPOPolicyLossFn``
    (``ppo_policy_loss.py`` @ 221b075: verl's, ``clip_ratio_c=3.0``) over the non-expert rows and
    ``SFTPhiLossFn`` (``masked_mean(-logp * sg(p (1 - p)))``) over the expert rows."""
    rollouts = (~batch.is_demo).nonzero().squeeze(-1)
    grpo = reference_verl_policy_loss(logp, entropy, batch, rows=rollouts, clip_ratio_c=clip_ratio_c, eps=eps)
    demo = batch.is_demo
    p = torch.exp(logp[demo]).detach()
    sft = masked_mean(-logp[demo] * p * (1 - p), batch.loss_mask[demo])
    return (1 - mu) * grpo + mu * sft


def reference_trl_dr_grpo(logp, entropy, batch, *, max_completion_length, entropy_coef, eps=0.2):
    """TRL ``trl/trainer/grpo_trainer.py`` @ f2cd577, ``loss_type == "dr_grpo"`` (l.3134-3138):
    ``(per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)`` with one
    micro-batch, and the entropy bonus a mean per-token entropy under every loss type (l.3152-3181)."""
    rows = (~batch.is_demo).nonzero().squeeze(-1)
    mask, adv = batch.loss_mask[rows], advantages_2d(batch)[rows]
    ratio = torch.exp(logp[rows] - batch.old_logp[rows])
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - eps, 1 + eps) * adv)
    loss = (per_token * mask).sum() / (per_token.size(0) * max_completion_length)
    return loss - entropy_coef * (entropy[rows] * mask).sum() / mask.sum()


# ---------------------------------------------------------------- GRPO: verl, LUFFY/UPT and TRL

def test_grpo_equals_verl_with_its_dual_clip_and_log_ratio_clamp():
    loss, glogp, gh, batch, _ = ours("grpo", "group.num_generations=4")
    rows = (~batch.is_demo).nonzero().squeeze(-1)
    assert_same((loss, glogp), reference_run(reference_verl_policy_loss, batch, rows=rows)[:2])


def test_the_dual_clip_changes_exactly_the_negative_advantage_tokens_past_the_bound():
    """On a grid of advantages x ratios: with the dual clip every point equals verl; without it, every
    point equals LUFFY's clip-only loss, and the two differ exactly where A < 0 and ratio > 3."""
    from hybridrft.ops import clipped_surrogate

    adv = torch.linspace(-2.0, 2.0, 5).view(-1, 1).expand(-1, 61)
    ratio = torch.linspace(0.1, 6.0, 61).view(1, -1).expand(5, -1)
    old = torch.zeros(5, 61)
    differs = 0
    for dual in (3.0, None):
        logp = torch.log(ratio).clone().requires_grad_(True)
        loss, _ = clipped_surrogate(logp, old, adv, dual_clip=dual)
        loss.sum().backward()
        ref_logp = torch.log(ratio).clone().requires_grad_(True)
        r = torch.exp(ref_logp)
        clip1 = torch.maximum(-adv * r, -adv * torch.clamp(r, 0.8, 1.2))
        ref = torch.where(adv < 0, torch.minimum(-adv * 3.0, clip1), clip1) if dual else clip1
        ref.sum().backward()
        torch.testing.assert_close(loss, ref)
        torch.testing.assert_close(logp.grad, ref_logp.grad)
        if dual is None:
            dual_loss, _ = clipped_surrogate(torch.log(ratio), old, adv, dual_clip=3.0)
            changed = ~torch.isclose(loss.detach(), dual_loss)
            assert torch.equal(changed, (adv < 0) & (ratio > 3.0 + 1e-6))
            differs = int(changed.sum())
    assert differs == 2 * 31  # two negative advantages x the 31 grid ratios above 3 (3.05 .. 6.0)


def test_the_log_ratio_clamp_bounds_a_runaway_token():
    """One token at log-ratio 25 with A = -1: clamped, its loss is e^20 (and verl's dual clip bounds it
    at 3); unclamped and without the dual clip (LUFFY, UPT, TRL) it is e^25 = 7.2e10."""
    from hybridrft.ops import clipped_surrogate

    logp, old, adv = torch.tensor([[0.0]]), torch.tensor([[-25.0]]), torch.tensor([[-1.0]])
    clamped, _ = clipped_surrogate(logp, old, adv)
    unclamped, _ = clipped_surrogate(logp, old, adv, log_ratio_bound=None)
    assert clamped.item() == pytest.approx(math.exp(20.0), rel=1e-5)
    assert unclamped.item() == pytest.approx(math.exp(25.0), rel=1e-5)
    bounded, _ = clipped_surrogate(logp, old, adv, dual_clip=3.0)
    assert bounded.item() == pytest.approx(3.0)  # verl: clamp and dual clip together


def test_grpo_without_dual_clip_and_clamp_equals_luffy_and_upt_policy_loss():
    loss, glogp, _, batch, _ = ours("grpo", "group.num_generations=4", "grpo.dual_clip=null", "grpo.log_ratio_bound=null")
    rows = (~batch.is_demo).nonzero().squeeze(-1)

    def ref(logp, entropy, batch):
        return reference_upt_policy_loss(
            logp[rows], batch.old_logp[rows], advantages_2d(batch)[rows], batch.loss_mask[rows],
            remove_token_mean=False, remove_clip=False,
        )

    assert_same((loss, glogp), reference_run(ref, batch)[:2])


def test_seq_mean_token_sum_norm_is_trl_dr_grpo_and_the_entropy_bonus_stays_a_token_mean():
    loss, glogp, gh, batch, _ = ours(
        "grpo", "group.num_generations=4", "grpo.dual_clip=null", "grpo.log_ratio_bound=null",
        "loss.aggregation=seq_mean_token_sum_norm", "loss.max_completion_length=8", "grpo.entropy_coef=0.01",
        "grpo.entropy_tokens=rollouts",  # a GRPO batch holds no demonstrations; this shared one does
    )
    expected = reference_run(reference_trl_dr_grpo, batch, max_completion_length=8, entropy_coef=0.01)
    assert_same((loss, glogp, gh), expected)


# ---------------------------------------------------------------- LUFFY

@pytest.mark.parametrize("remove_token_mean", [False, True])
def test_luffy_equals_the_luffy_code(remove_token_mean):
    overrides = ["group.num_generations=4", "grpo.clip=false", "grpo.log_ratio_bound=null"]
    if remove_token_mean:  # one process, one micro-batch: D = 1 x 1 x T
        overrides += ["loss.policy_aggregation=token_sum_norm", f"loss.token_sum_divisor={T}"]
    loss, glogp, gh, batch, _ = ours("luffy", *overrides)
    expected = reference_run(reference_luffy_loss, batch, remove_token_mean=remove_token_mean, remove_clip=True)
    assert_same((loss, glogp, gh), expected)


def test_luffy_clipped_equals_the_luffy_code_default():
    loss, glogp, gh, batch, _ = ours("luffy", "group.num_generations=4", "grpo.log_ratio_bound=null")
    expected = reference_run(reference_luffy_loss, batch, remove_token_mean=False, remove_clip=False)
    assert_same((loss, glogp, gh), expected)


@pytest.mark.parametrize(("ranks", "micro_batch_rows"), [(1, 15), (2, 5), (3, 1)])
def test_token_sum_norm_reproduces_the_scripts_update_on_any_split(ranks, micro_batch_rows):
    """The LUFFY script's update with ``loss_remove_token_mean=True``, simulated: the batch spread over
    ``ranks`` GPUs, each cutting its share into micro-batches (dynamic batching), each micro-batch's
    loss ``sum / T`` divided by GA = 1 and summed, the GPUs' gradients averaged (FSDP). Ours, with
    ``D = ranks x 1 x T``, gives that gradient from the whole batch (and so on any process count)."""
    overrides = ["group.num_generations=4", "grpo.clip=false", "grpo.log_ratio_bound=null", "grpo.entropy_coef=0",
                 "loss.policy_aggregation=token_sum_norm", f"loss.token_sum_divisor={ranks * T}"]
    loss, glogp, _, batch, _ = ours("luffy", *overrides)

    def script_update(logp, entropy, batch):
        rows = torch.arange(len(LENGTHS))
        shares = rows.chunk(ranks)
        total = 0.0
        for share in shares:
            for micro in share.split(micro_batch_rows):
                part = batch.select(micro.tolist())
                part.advantage = batch.advantage[micro]
                total = total + reference_luffy_loss(logp[micro], entropy[micro], part, remove_token_mean=True,
                                                     remove_clip=True, entropy_coeff=0.0) / 1  # GA = 1
        return total / ranks  # FSDP averages the ranks' gradients

    assert_same((loss, glogp), reference_run(script_update, batch)[:2])


# ---------------------------------------------------------------- SRFT (the UPT re-implementation)

SRFT_SCRIPT = ["group.num_generations=4", "srft.policy_shaping_gamma=0.1", "grpo.clip=false", "grpo.log_ratio_bound=null"]


@pytest.mark.parametrize("remove_token_mean", [False, True])
def test_srft_equals_the_upt_re_implementation(remove_token_mean):
    overrides = list(SRFT_SCRIPT)
    if remove_token_mean:
        overrides += ["loss.policy_aggregation=token_sum_norm", f"loss.token_sum_divisor={T}"]
    loss, glogp, gh, batch, _ = ours("srft", *overrides)
    expected = reference_run(reference_upt_srft_loss, batch, remove_token_mean=remove_token_mean)
    assert_same((loss, glogp, gh), expected)


def test_srft_with_one_aggregation_cannot_reproduce_the_script_and_the_policy_aggregation_does():
    """The issue's case: the script's loss differs from every single aggregation of every term."""
    batch = ours("srft", *SRFT_SCRIPT)[3]
    script, _, _ = reference_run(reference_upt_srft_loss, batch, remove_token_mean=True)
    single = [ours("srft", *SRFT_SCRIPT, f"loss.aggregation={mode}", f"loss.token_sum_divisor={T}")[0]
              for mode in ("token_mean", "token_sum_norm")]
    split = ours("srft", *SRFT_SCRIPT, "loss.policy_aggregation=token_sum_norm", f"loss.token_sum_divisor={T}")[0]
    assert all(abs(float(s - script)) > 1e-2 for s in single)
    torch.testing.assert_close(split, script)


def test_srft_code_settings_weigh_sft_by_exp_plus_h_per_token():
    """``recipes/paper/srft_code.yaml``'s reading of the authors' code (fyqqyf/SRFT mix_core_alg.py
    l.162-163 as quoted): the SFT weight is ``0.5 exp(+H_t)`` per token, so its gradient on a
    demonstration token is ``-0.5 exp(H_t) / N_demo_tokens``."""
    loss, glogp, _, batch, _ = ours(
        "srft", "group.num_generations=4", "srft.sft_entropy_sign=1", "srft.entropy_granularity=token",
        "srft.self_rollout_loss=advantage", "grpo.entropy_coef=0",
    )
    _, _, entropy = shared_batch()
    demo = batch.masks["demo"]
    # the demonstration's own RL term (-A p, p = exp(logp)) adds -A p / N_completion to the same tokens
    _, logp, _ = shared_batch()
    n_demo, n_all = demo.sum(), batch.loss_mask.sum()
    adv = advantages_2d(batch)
    expected = -0.5 * torch.exp(entropy) / n_demo - adv * torch.exp(logp) / n_all
    torch.testing.assert_close(glogp[demo], expected[demo])


# ---------------------------------------------------------------- HPT

@pytest.mark.parametrize("remove_token_mean", [False, True])
def test_hpt_equals_the_upt_code(remove_token_mean):
    overrides = ["group.num_generations=4", "grpo.clip=false", "grpo.log_ratio_bound=null"]
    if remove_token_mean:
        overrides += ["loss.policy_aggregation=token_sum_norm", f"loss.token_sum_divisor={T}"]
    loss, glogp, gh, batch, _ = ours("hpt", *overrides)
    # switch_gate 0: group 1 (no correct rollout) goes to SFT; groups 0 and 2 to RL
    rows = torch.tensor([0, 1, 2, 3, 9, 10, 11, 12, 13])
    expected = reference_run(reference_hpt_loss, batch, rows=rows, remove_token_mean=remove_token_mean)
    assert_same((loss, glogp, gh), expected)


# ---------------------------------------------------------------- CHORD

def test_chord_default_equals_trinity_rft_with_phi_and_dual_clip():
    loss, glogp, _, batch, plan = ours("chord", "group.num_generations=4", step=300)
    mu = plan.info["chord/mu"]
    assert 0.02 < mu < 0.5
    expected = reference_run(reference_trinity_chord_loss, batch, mu=mu)
    assert_same((loss, glogp), expected[:2])


# ---------------------------------------------------------------- masks select, never multiply

@pytest.mark.parametrize("method", ["sft", "srft", "luffy", "grpo", "hpt", "chord"])
def test_a_minus_inf_log_prob_at_padding_changes_nothing(method):
    """A -inf log-prob (and old log-prob) at every padded position: the loss and the gradient are
    those of the clean batch, finite, with no gradient at padding."""
    clean = ours(method, "group.num_generations=4")
    objective = build_objective(load_config(overrides=[f"method={method}", "group.num_generations=4"]))
    batch, logp, entropy = shared_batch()
    pad = ~batch.loss_mask
    logp = logp.masked_fill(pad, float("-inf")).requires_grad_(True)
    batch.old_logp = batch.old_logp.masked_fill(pad, float("-inf"))
    entropy = entropy.clone().requires_grad_(True)
    plan = objective.plan(1)
    objective.prepare_batch(batch, plan)
    totals = BatchTotals({k: MaskTotals.of(m) for k, m in batch.masks.items()})
    loss, _ = objective.step_loss(batch, PolicyOutputs(logp, entropy), totals, plan)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    torch.testing.assert_close(loss.detach(), clean[0])
    torch.testing.assert_close(logp.grad, clean[1])
    assert (logp.grad[pad] == 0).all()


# ---------------------------------------------------------------- static mix, two-stage, SASR, SFT

def test_static_mix_equals_the_luffy_rl_with_sft_loss_baseline():
    """LUFFY ``mix_actor.py`` @ 01f4ae0, ``use_sft_multitask_loss`` (l.110-142): ``sft_loss *
    sft_loss_coef + pg_loss`` over every row, as ``exp_scripts/train_rl_sft_loss.sh`` runs it."""
    loss, glogp, gh, batch, _ = ours("static_mix", "group.num_generations=4", "grpo.clip=false", "grpo.log_ratio_bound=null")
    rows = torch.arange(len(LENGTHS))
    expected = reference_run(reference_hpt_loss, batch, rows=rows, remove_token_mean=False, sft_coef=1.0)
    assert_same((loss, glogp, gh), expected)


def test_sft_steps_equal_the_luffy_sft_loss():
    """LUFFY ``mix_core_alg.py`` ``compute_sft_pure_loss``: ``masked_mean(-log_prob, eos_mask)`` over
    demonstration rows; the same for SFT, two-stage's first phase and SASR's warm-up."""
    for method, overrides in (("sft", []), ("two_stage", ["two_stage.sft_steps=5"]), ("sasr", ["sasr.warmup_steps=5"])):
        loss, glogp, _, batch, plan = ours(method, *overrides)
        assert plan.kind == "sft"

        def ref(logp, entropy, batch):
            return masked_mean(-logp[batch.is_demo], batch.loss_mask[batch.is_demo])

        assert_same((loss, glogp), reference_run(ref, batch)[:2])


def test_rl_steps_of_two_stage_and_sasr_follow_their_sources():
    """Two-stage's RL phase is LUFFY's verl fork (no dual clip, no clamp: ``grpo.log_ratio_bound=null``
    to match it exactly); SASR's RL steps are GRPO's, verl's with the dual clip."""
    loss, glogp, _, batch, plan = ours("two_stage", "two_stage.sft_steps=1", "group.num_generations=4",
                                       "grpo.log_ratio_bound=null", step=2)
    assert plan.kind == "rl"
    rows = (~batch.is_demo).nonzero().squeeze(-1)

    def luffy(logp, entropy, batch):
        return reference_upt_policy_loss(logp[rows], batch.old_logp[rows], advantages_2d(batch)[rows],
                                         batch.loss_mask[rows], remove_token_mean=False, remove_clip=False)

    assert_same((loss, glogp), reference_run(luffy, batch)[:2])
    # an RL step of SASR (its plan for a step the draw sends to RL), on the same batch
    objective = build_objective(load_config(overrides=["method=sasr", "group.num_generations=4"]))
    batch, logp, entropy = shared_batch()
    plan = objective.step_plan("rl", {})
    objective.prepare_batch(batch, plan)
    logp, entropy = logp.clone().requires_grad_(True), entropy.clone().requires_grad_(True)
    totals = BatchTotals({k: MaskTotals.of(m) for k, m in batch.masks.items()})
    loss, _ = objective.step_loss(batch, PolicyOutputs(logp, entropy), totals, plan)
    loss.backward()
    assert_same((loss.detach(), logp.grad), reference_run(reference_verl_policy_loss, batch, rows=rows)[:2])
