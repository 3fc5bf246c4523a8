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


# ------------------------------------------------------------------ the teacher in the trainer


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_tokenizer):
    """Another tiny model with the student's tokenizer: a teacher that disagrees with the student."""
    from conftest import build_tiny_llama

    path = tmp_path_factory.mktemp("tiny-teacher")
    build_tiny_llama(tiny_tokenizer, seed=7).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _teacher_logprobs(teacher_dir, batch, temperature):
    from hybridrft.models import load_policy
    from hybridrft.ops import token_logprobs_and_entropy

    teacher = load_policy(str(teacher_dir)).eval()
    with torch.no_grad():
        logp, _ = token_logprobs_and_entropy(teacher, batch.input_ids, batch.attention_mask, temperature=temperature)
    return logp


@pytest.mark.parametrize("method", ["distill", "grpo", "distill-hf"])
def test_the_teacher_scores_the_sampled_tokens_and_the_kl_is_logged(method, tiny_model_dir, teacher_dir, tmp_path):
    """(distill-hf: transformers.generate records no sampler log-probs; the behaviour policy is then the
    current one, ratio 1.)"""
    from conftest import tiny_config
    from hybridrft.train import Trainer, read_metrics

    backend = "hf" if method.endswith("-hf") else "native"
    method = method.split("-")[0]
    overrides = [f"method={method}", f"teacher.name_or_path={teacher_dir}", "train.max_steps=2", f"rollout.backend={backend}"]
    if method == "grpo":
        overrides.append("distill.coef=0.5")
    trainer = Trainer(tiny_config(tiny_model_dir, tmp_path / "run", *overrides))
    assert trainer.teacher is not None and not any(p.requires_grad for p in trainer.teacher.parameters())
    plan, batch, _ = trainer.collect(1)
    trainer.objective.prepare_batch(batch, plan)
    with torch.no_grad():
        batch.teacher_logp = trainer._logprobs(batch, trainer.teacher)
    expected = _teacher_logprobs(teacher_dir, batch, trainer.config.rollout.temperature)
    torch.testing.assert_close(batch.teacher_logp[batch.loss_mask], expected[batch.loss_mask], atol=1e-5, rtol=0)
    trainer.train()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    for row in rows:
        assert row["distill/kl"] > 0 and "time/teacher" in row and "loss/distill" in row
        # per rollout: the token mean times the mean rollout length
        assert row["distill/kl_per_sequence"] == pytest.approx(row["distill/kl"] * row["length/response_mean"], rel=1e-4)
        # the logged KL is the mean of log p_sampler - log p_teacher over the sampled tokens
        assert "distill/kl_correct" in row or "distill/kl_incorrect" in row


def test_a_teacher_with_another_tokenizer_is_refused_before_it_loads(tiny_model_dir, tmp_path):
    from conftest import build_tiny_llama, build_tiny_tokenizer, tiny_config
    from hybridrft.train import Trainer

    other = build_tiny_tokenizer(vocab_size=320)
    path = tmp_path / "other-teacher"
    build_tiny_llama(other).save_pretrained(path)
    other.save_pretrained(path)
    with pytest.raises(ValueError, match="tokenizer of the teacher .* differs from that of the student"):
        Trainer(tiny_config(tiny_model_dir, tmp_path / "run", "method=distill", f"teacher.name_or_path={path}"))
    with pytest.raises(ValueError, match="set teacher.name_or_path"):
        Trainer(tiny_config(tiny_model_dir, tmp_path / "run2", "method=grpo", "distill.coef=1.0"))


def test_a_distillation_run_resumes_bit_for_bit(tiny_model_dir, teacher_dir, tmp_path):
    from conftest import tiny_config
    from hybridrft.train import Trainer, read_metrics

    overrides = ["method=srft", "distill.coef=0.5", f"teacher.name_or_path={teacher_dir}", "train.max_steps=3",
                 "train.save_every=1"]
    straight = Trainer(tiny_config(tiny_model_dir, tmp_path / "straight", *overrides))
    straight.train()
    Trainer(tiny_config(tiny_model_dir, tmp_path / "resumed", *overrides)).train(stop_at=2)
    resumed = Trainer(tiny_config(tiny_model_dir, tmp_path / "resumed", *overrides, "train.resume=true"))
    resumed.train()
    for (name, a), b in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        torch.testing.assert_close(b, a, atol=0, rtol=0, msg=name)
    drop = ("time/", "throughput/")
    rows = [[{k: v for k, v in r.items() if not k.startswith(drop)} for r in read_metrics(out / "metrics.jsonl", kind=None)]
            for out in (tmp_path / "straight", tmp_path / "resumed")]
    assert rows[1] == rows[0] and all("distill/kl" in r for r in rows[0] if r.get("kind") == "train")


def _teacher_recipes(tmp_path, model_dir, teacher_dir, method: str, names: tuple[str, ...], **sections) -> dict:
    """``test_scale``'s recipe for ``method`` with a teacher and ``sections``, once per run folder name."""
    import yaml
    from test_scale import _recipe

    paths = {}
    for name in names:
        path = _recipe(tmp_path, model_dir, tmp_path / name, method)
        recipe = {**yaml.safe_load(path.read_text()), "teacher": {"name_or_path": str(teacher_dir)}, **sections}
        path.write_text(yaml.safe_dump(recipe))
        paths[name] = path
    return paths


@pytest.mark.parametrize("loss", ["reverse_kl", "jsd"])
def test_two_processes_compute_the_one_process_run_with_a_teacher(loss, tiny_model_dir, teacher_dir, tmp_path, monkeypatch):
    from test_scale import _assert_same_run, _launch, _one_process

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    # jsd: the teacher runs inside the DDP-wrapped forward
    paths = _teacher_recipes(tmp_path, tiny_model_dir, teacher_dir, "distill", ("one", "two"), distill={"loss": loss})
    _one_process(paths["one"])
    _launch(paths["two"], 2)
    _assert_same_run(tmp_path / "one", tmp_path / "two")


@pytest.mark.parametrize("loss", ["reverse_kl", "jsd"])
def test_under_fsdp2_the_teacher_and_reference_are_sharded_and_the_run_is_the_one_process_run(
    loss, tiny_model_dir, teacher_dir, tmp_path, monkeypatch
):
    """Teacher and reference model are sharded like the policy (rank 0 holds its half of every layer
    parameter and the whole embeddings, norm and head), and the run is still the one-process run: the
    JSD reads the teacher's whole head inside the policy's sharded forward, the reverse KL scores
    through the teacher's own sharded forward."""
    import re

    from hybridrft.models import load_policy
    from test_scale import _assert_same_run, _launch_fsdp2, _one_process

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    paths = _teacher_recipes(tmp_path, tiny_model_dir, teacher_dir, "grpo", ("one", "sharded"),
                             distill={"loss": loss, "coef": 0.5}, grpo={"beta": 0.05})  # beta: a reference model too
    _one_process(paths["one"])
    done = _launch_fsdp2(paths["sharded"])
    _assert_same_run(tmp_path / "one", tmp_path / "sharded")
    log = " ".join((done.stdout + done.stderr).split())  # the log wraps lines
    for name, path in (("the reference model", tiny_model_dir), ("the teacher", teacher_dir)):
        model = load_policy(str(path))
        layers = model.model.layers
        total = sum(p.numel() for p in model.parameters())
        in_layers = sum(p.numel() for p in layers.parameters())
        # FSDP2 splits each parameter along its first dimension; rank 0 takes the first ceil(d0 / 2) rows
        rank0 = sum(-(-p.shape[0] // 2) * (p.numel() // p.shape[0]) for p in layers.parameters())
        expected = f"{name} sharded (FSDP2, {len(layers)} layers): this process holds {total - in_layers + rank0} of its {total} parameters"
        assert expected in log, re.findall(rf"{name} sharded[^:]*: [^.]*parameters", log)


# ------------------------------------------------------------------ GKD: the JSD in the chunked forward


def test_the_chunked_jsd_equals_the_full_logits_jsd_in_value_and_gradient(tiny_tokenizer):
    from conftest import build_tiny_llama
    from hybridrft.ops import token_logprobs_entropy_and_jsd

    student, teacher = build_tiny_llama(tiny_tokenizer, seed=1), build_tiny_llama(tiny_tokenizer, seed=2).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 300, (3, 9), generator=g)
    attention = torch.ones_like(ids)
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    loss_mask[:, 4:] = True
    loss_mask[2, 7:] = False
    _, _, jsd = token_logprobs_entropy_and_jsd(student, teacher, ids, attention, loss_mask, beta=0.3,
                                               jsd_temperature=0.8, chunk_size=4)
    (jsd.sum() / loss_mask.sum()).backward()
    chunked = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()
    # the plain computation: full logits of both models, shifted, TRL's formula, a token mean
    logits = student(input_ids=ids, attention_mask=attention).logits[:, :-1]
    with torch.no_grad():
        teacher_logits = teacher(input_ids=ids, attention_mask=attention).logits[:, :-1]
    plain = generalized_jsd(logits, teacher_logits, beta=0.3, temperature=0.8)
    scored = loss_mask[:, 1:]
    torch.testing.assert_close(jsd[:, 1:][scored], plain[scored].detach(), atol=1e-6, rtol=1e-5)
    assert torch.all(jsd[:, 1:][~scored] == 0)
    (plain[scored].sum() / loss_mask.sum()).backward()
    for name, p in student.named_parameters():
        torch.testing.assert_close(chunked[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_a_gkd_run_mixes_on_policy_and_demonstration_steps_and_logs_the_jsd(tiny_model_dir, teacher_dir, tmp_path):
    from conftest import tiny_config
    from hybridrft.train import Trainer, read_metrics

    trainer = Trainer(tiny_config(tiny_model_dir, tmp_path / "run", "method=distill", "distill.loss=jsd",
                                  f"teacher.name_or_path={teacher_dir}", "train.max_steps=6"))
    trainer.train()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    on_policy = [r["distill/on_policy"] for r in rows]
    assert 0 < sum(on_policy) < len(rows)  # lmbda 0.5: some steps on the student's samples, some on demonstrations
    for row in rows:
        assert row["distill/jsd"] > 0 and "time/teacher" not in row  # the JSD needs no separate teacher pass
        assert (row["tokens/generated"] > 0) == bool(row["distill/on_policy"])


def test_the_jsd_term_adds_to_another_method(tiny_model_dir, teacher_dir, tmp_path):
    from conftest import tiny_config
    from hybridrft.train import Trainer, read_metrics

    Trainer(tiny_config(tiny_model_dir, tmp_path / "run", "method=luffy", "distill.coef=0.3", "distill.loss=jsd",
                        f"teacher.name_or_path={teacher_dir}")).train()
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(r["distill/jsd"] > 0 and "loss/off_policy" in r for r in rows)


def test_the_reverse_kl_term_has_the_importance_sampled_policy_gradient():
    from hybridrft.ops.distill import reverse_kl_policy_terms

    g = torch.Generator().manual_seed(3)
    logp = (-0.1 - 2 * torch.rand(2, 5, generator=g)).requires_grad_(True)
    behaviour = -0.1 - 2 * torch.rand(2, 5, generator=g)
    teacher = -0.1 - 2 * torch.rand(2, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    loss, advantages = reverse_kl_policy_terms(logp, behaviour, teacher, mask, coef=0.7)
    loss.sum().backward()
    ratio = torch.exp(logp.detach() - behaviour)
    # d/dlogp of -rho A = -rho A (A detached): by hand
    torch.testing.assert_close(logp.grad, -ratio * advantages)
    torch.testing.assert_close(advantages, -0.7 * mask * (behaviour - teacher))
    assert torch.all(logp.grad[~mask] == 0)
