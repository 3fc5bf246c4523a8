"""`hybridrft report` and `hybridrft analyze` on real run folders trained here (tiny random Llama)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from conftest import tiny_config
from hybridrft.cli.report_cmd import analyze_app, report_command
from hybridrft.data import DEFAULT_ANSWER_INSTRUCTION, Example, render_prompt
from hybridrft.eval import load_responses
from hybridrft.models import load_tokenizer
from hybridrft.report import default_output_dir, load_runs, write_report
from hybridrft.report.plots import panel_subplots
from hybridrft.train import Trainer

runner = CliRunner()
app = typer.Typer()
app.command(name="report")(report_command)
app.add_typer(analyze_app, name="analyze")

DATA_URI = re.compile(r"src='data:image/png;base64,[A-Za-z0-9+/=]{100,}'")


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    """Two finished 2-step runs (srft, sasr) and the held-out prompt ids the srft trainer used."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for method in ("srft", "sasr"):
        trainer = Trainer(tiny_config(tiny_model_dir, root / f"{method}-run", f"method={method}"))
        trainer.train()
        out[method] = root / f"{method}-run"
        if method == "srft":
            out["eval_prompt_ids"] = {e.id: ids for e, ids in zip(trainer.eval_set.examples, trainer.eval_set.prompt_ids)}
    return out


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def assert_self_contained(page: str) -> None:
    assert page.lstrip().startswith("<!DOCTYPE html>")
    assert DATA_URI.search(page)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    assert not re.search(r"src=['\"](?!data:)", page), "every image is embedded"


def test_report_on_one_run(runs, tiny_model_dir):
    run = runs["srft"]
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    assert_self_contained(page)
    for name in ("loss", "reward", "accuracy", "entropy", "length", "method", "diagnostics", "optimizer", "throughput"):
        assert (run / "plots" / f"{name}.png").is_file(), name
    assert "sasr/" not in page  # no SASR metric in an SRFT run
    # the card lists the method's own section and the shared ones, not other methods' sections
    assert "<dt>srft</dt>" in page and "<dt>group</dt>" in page and "<dt>grpo</dt>" in page and "<dt>loss</dt>" in page
    assert "<dt>chord</dt>" not in page and "<dt>sasr</dt>" not in page
    # header: run name, method, model, steps, learning rate; summary: held-out accuracy first -> last
    assert "srft-run" in page and "<b>srft</b>" in page and str(tiny_model_dir) in page
    assert "2 done of 2" in page and "0.001" in page
    assert "(step 0) →" in page and "(step 2)" in page
    assert "srft/w_sft" in page and "loss/sft_demo" in page  # captions name the plotted keys


def test_report_overlays_two_runs(runs, tmp_path):
    out = tmp_path / "compare"
    result = invoke("report", runs["srft"], runs["sasr"], "--output", out)
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert_self_contained(page)
    assert "srft-run" in page and "sasr-run" in page and "<b>sasr</b>" in page
    for name in ("loss", "reward", "entropy", "method"):
        assert (out / "plots" / f"{name}.png").is_file(), name
    assert page.count("data:image/png;base64,") == len(list((out / "plots").glob("*.png")))
    assert "sasr/choice_sft" in page and "sasr/g_warmup" in page and "srft/w_sft" in page
    # the default output folder for several runs sits next to the first one
    assert default_output_dir([runs["srft"], runs["sasr"]]) == runs["srft"].parent / "compare-srft-run-vs-sasr-run"
    assert default_output_dir([runs["srft"]]) == runs["srft"]


def test_user_errors_exit_2_with_one_message(runs, tmp_path, tiny_model_dir):
    (tmp_path / "empty").mkdir()
    result = invoke("report", runs["srft"], tmp_path / "empty")
    assert result.exit_code == 2 and "no metrics.jsonl" in result.output
    result = invoke("analyze", "entropy", tmp_path / "nowhere")
    assert result.exit_code == 2 and "run folder not found" in result.output
    result = invoke("analyze", "shift", tiny_model_dir, tmp_path / "no-model", "-r", runs["srft"], "-o", tmp_path / "a")
    assert result.exit_code == 2 and "not found: there is no folder" in result.output
    result = invoke("analyze", "shift", tiny_model_dir, tiny_model_dir, "-r", runs["srft"] / "samples.jsonl", "-o", tmp_path / "a")
    assert result.exit_code == 2 and "'prompt'" in result.output
    assert "Traceback" not in result.output


def test_analyze_entropy_and_the_report_picks_it_up(runs, tmp_path):
    out = tmp_path / "entropy"
    result = invoke("analyze", "entropy", runs["srft"], runs["sasr"], "--output", out, "--smooth", "2")
    assert result.exit_code == 0, result.output
    assert (out / "entropy-dynamics.png").stat().st_size > 10_000
    # one run: RUN/analysis/, which its report then embeds
    result = invoke("analyze", "entropy", runs["sasr"])
    assert result.exit_code == 0, result.output
    assert (runs["sasr"] / "analysis" / "entropy-dynamics.png").is_file()
    result = invoke("report", runs["sasr"])
    assert result.exit_code == 0, result.output
    page = (runs["sasr"] / "report.html").read_text()
    assert "entropy-dynamics.png" in page and "SRFT paper Figs. 4-6" in page
    assert page.count("data:image/png;base64,") == len(list((runs["sasr"] / "plots").glob("*.png"))) + 1


def write_run(folder, config, records):
    """A run folder as the trainer leaves it, for the report: config.yaml and metrics.jsonl."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def foo_run(folder):
    """A run of a method the report has never heard of, ``foo``, with its own metrics and settings."""
    config = {
        "method": "foo",
        "model": {"name_or_path": "tiny", "dtype": "float32"},
        "train": {"max_steps": 6, "learning_rate": 1e-3, "seed": 0},
        "group": {"num_generations": 4, "advantage_scale": "group"},
        "grpo": {"clip_eps_low": 0.2, "beta": 0.0},
        "loss": {"aggregation": "token_mean"},
        "foo": {"alpha_start": 0.25, "choice_rule": "coin"},
        "bar": {"zeta": 7},  # another method's section: not on the card
    }
    records = [{"kind": "eval", "step": 0, "eval/accuracy": 0.25}]
    for step in range(1, 7):
        records.append({
            "kind": "train", "step": step, "plan": "rl", "loss": 1.0 / step, "reward/mean": 0.1 * step,
            "accuracy/rollout": 0.1 * step, "groups/all_correct": 0.0, "kl/initial_policy": 0.01 * step, "grpo/clip_fraction": 0.02,
            "foo/alpha": 0.25 + 0.05 * step, "foo/p_t": 1.0 / step, "foo/choice_x": float(step % 2),
            "foo/beta_norm": 2.0 + step, "foo/beta_warmup": 3.0, "lonely_scalar": float(step),
        })
    records.append({"kind": "eval", "step": 6, "eval/accuracy": 0.5})
    return write_run(folder, config, records)


def test_a_new_method_gets_its_plots_and_settings_from_its_keys(tmp_path, monkeypatch):
    import matplotlib.figure

    drawn = {}  # figure file stem -> visible axes titles, legend texts, markers per axes
    save = matplotlib.figure.Figure.savefig

    def recording_savefig(fig, path, *args, **kwargs):
        axes = [ax for ax in fig.axes if ax.get_visible()]
        drawn[Path(path).stem] = {
            "titles": [ax.get_title() for ax in axes],
            "legend": [t.get_text() for legend in fig.legends for t in legend.get_texts()],
            "markers": {ax.get_title(): len(ax.collections) for ax in axes},
        }
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording_savefig)
    run = foo_run(tmp_path / "foo-run")
    page = write_report([run]).read_text()
    assert_self_contained(page)

    # every key of the unknown prefix gets a subplot titled with it; the 0/1 choice key rides on
    # foo/p_t as markers, the warm-up key is drawn dashed with its stem's key; a key without a prefix
    # of its own that no shared panel lists is a method metric too
    method = drawn["method"]
    titles = [title.replace("\n", "; ") for title in method["titles"]]
    assert titles == ["foo/alpha", "foo/beta_norm; dashed: foo/beta_warmup", "foo/p_t; markers: foo/choice_x", "lonely_scalar"]
    assert method["markers"][method["titles"][2]] == 2  # the steps where foo/choice_x is 1, and where it is 0
    assert "foo/choice_x = 1" in method["legend"] and "foo/choice_x = 0" in method["legend"]
    # shared keys stay in the shared panels and only there
    assert drawn["diagnostics"]["titles"][0].startswith("groups with every rollout")
    assert drawn["diagnostics"]["titles"][-1] == "grpo/clip_fraction"  # an unlisted key of a shared prefix
    assert not any(t.startswith(("kl/", "groups/", "loss", "reward/")) for t in method["titles"])
    assert {p.stem for p in (run / "plots").glob("*.png")} == set(drawn)
    # the page names the plotted keys, and the card shows the method's own section and the shared ones
    assert "foo/alpha, foo/beta_norm, foo/beta_warmup, foo/p_t, foo/choice_x, lonely_scalar" in page
    assert "<dt>foo</dt><dd><code>alpha_start=0.25, choice_rule=coin</code>" in page
    for section in ("group", "grpo", "loss"):
        assert f"<dt>{section}</dt>" in page
    assert "<dt>bar</dt>" not in page and "zeta" not in page


def test_choice_and_warmup_keys_stand_alone_without_their_host(tmp_path):
    records = [{"kind": "train", "step": s, "baz/choice_y": float(s % 2), "baz/q_warmup": 1.0, "baz/r": 2.0} for s in (1, 2)]
    runs = load_runs([write_run(tmp_path / "baz-run", {"method": "baz"}, records)])
    assert [(s.key, s.markers, s.dashed) for s in panel_subplots("method", runs)] == [
        ("baz/choice_y", [], []), ("baz/q_warmup", [], []), ("baz/r", [], [])]


def direct_probs(model, prompt_ids, completion_ids):
    """Completion-token probabilities from one plain forward pass: softmax of the logits."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1).gather(-1, ids[0, 1:, None])[:, 0]
    return logp[len(prompt_ids) - 1 :].exp().numpy()


def test_analyze_shift_on_a_runs_generations(runs, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    run = runs["srft"]
    tuned = run / "final_model"
    result = invoke("analyze", "shift", tiny_model_dir, tuned, "--responses", run)
    assert result.exit_code == 0, result.output
    out = run / "analysis"
    for name in ("shift-histogram.png", "shift-tokens.png", "shift.json", "shift-tokens.jsonl"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "shift.json").read_text())
    records = [json.loads(line) for line in (out / "shift-tokens.jsonl").read_text().splitlines()]
    generations = [json.loads(line) for line in (run / "eval" / "generations-step-000002.jsonl").read_text().splitlines()]
    assert summary["responses"] == len(records) == len(generations) == 4
    assert summary["source"].endswith("generations-step-000002.jsonl")
    assert all(len(r["tokens"]) == len(r["p_base"]) == len(r["p_tuned"]) == len(r["token_ids"]) for r in records)
    assert summary["tokens"] == sum(len(r["tokens"]) for r in records)
    assert sum(summary["histogram"]["counts"]) == summary["tokens"]

    # the prompts are rebuilt exactly as the trainer rendered them
    tokenizer = load_tokenizer(str(tuned))
    responses, _ = load_responses(run, tokenizer)
    for response in responses:
        assert response.prompt_ids == runs["eval_prompt_ids"][response.id]

    # the reported probabilities are those of a plain forward pass under each model
    base_model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tuned_model = AutoModelForCausalLM.from_pretrained(tuned).eval()
    r0, rec0 = responses[0], records[0]
    assert rec0["token_ids"] == r0.completion_ids
    np.testing.assert_allclose(rec0["p_base"], direct_probs(base_model, r0.prompt_ids, r0.completion_ids), atol=1e-5)
    np.testing.assert_allclose(rec0["p_tuned"], direct_probs(tuned_model, r0.prompt_ids, r0.completion_ids), atol=1e-5)
    assert max(abs(t - b) for r in records for t, b in zip(r["p_tuned"], r["p_base"])) > 1e-4  # training moved something

    # and the report shows the shift: summary, token spans, both PNGs
    assert invoke("report", run).exit_code == 0
    page = (run / "report.html").read_text()
    assert_self_contained(page)
    assert "token by token" in page and "title='p_base " in page and "SRFT paper Fig. 2b" in page


def test_shift_of_a_model_against_itself_is_zero_on_a_prompt_completion_file(tiny_model_dir, tmp_path):
    rows = [
        {"prompt": "Sam has 12 apples. He buys 7 more. How many apples does Sam have now?", "completion": "12 + 7 = 19. The answer is \\boxed{19}."},
        {"prompt": [{"role": "user", "content": "What is 6 * 4?"}], "completion": "6 * 4 = 24", "truncated": True},
    ]
    path = tmp_path / "responses.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = invoke("analyze", "shift", tiny_model_dir, tiny_model_dir, "-r", path, "--example", "1")
    assert result.exit_code == 0, result.output
    out = tmp_path / "analysis"
    records = [json.loads(line) for line in (out / "shift-tokens.jsonl").read_text().splitlines()]
    assert all(r["p_base"] == r["p_tuned"] for r in records)
    summary = json.loads((out / "shift.json").read_text())
    assert summary["mean_abs_delta"] == 0.0 and summary["share_abs_delta_below_0.01"] == 1.0
    counts = summary["histogram"]["counts"]
    assert counts[len(counts) // 2] == summary["tokens"]  # every token in the bin around 0
    assert summary["example"]["index"] == 1 and summary["example"]["tokens"]

    # a prompt field is the problem, rendered with the chat template and the default instruction;
    # EOS closes a completion unless the record says it was truncated
    tokenizer = load_tokenizer(str(tiny_model_dir))
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    for row, record in zip(rows, records):
        text = render_prompt(tokenizer, Example("x", row["prompt"], [], ""), answer_instruction=DEFAULT_ANSWER_INSTRUCTION)
        prompt_ids = tokenizer(text, add_special_tokens=False).input_ids
        completion_ids = tokenizer(row["completion"], add_special_tokens=False).input_ids
        if not row.get("truncated"):
            completion_ids.append(tokenizer.eos_token_id)
        assert record["token_ids"] == completion_ids
        np.testing.assert_allclose(record["p_base"], direct_probs(model, prompt_ids, completion_ids), atol=1e-5)


def test_training_and_benchmark_evaluation_write_one_generation_record(runs, tiny_model_dir, tmp_path):
    """A run's eval/generations-step-N.jsonl and `hybridrft eval`'s generations/NAME.jsonl hold the
    same record (every key, prompt included); `analyze shift` reads both, and an old run's file
    (reward/length, no prompt) too, with the prompts rebuilt from its config as before."""
    import shutil

    from hybridrft.cli.eval_cmd import evaluate_command
    from hybridrft.data import DEFAULT_ANSWER_INSTRUCTION as INSTRUCTION
    from hybridrft.eval import CHOICE_INSTRUCTION, GenerationRecord, load_benchmark, parse_benchmarks, read_generation_records
    from hybridrft.eval.records import RECORD_KEYS
    from hybridrft.rollout import encode_prompts

    run = runs["srft"]
    trained = run / "eval" / "generations-step-000002.jsonl"
    math_rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(2)]
    mc_rows = [{"Question": f"Which is {i}?", "Correct Answer": str(i), "Incorrect Answer 1": "x",
                "Incorrect Answer 2": "y", "Incorrect Answer 3": "z"} for i in range(2)]
    (tmp_path / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in math_rows))
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mc_rows))
    eval_app = typer.Typer(add_completion=False)
    eval_app.command()(evaluate_command)
    suites = [f"gsm8k={tmp_path / 'math.jsonl'}", f"gpqa={tmp_path / 'mc.jsonl'}"]
    result = runner.invoke(eval_app, [str(tiny_model_dir), "--suite", suites[0], "--suite", suites[1],
                                      "--max-new-tokens", "4", "--system-prompt", "Be brief.", "-o", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    evaluated = {name: tmp_path / "ev" / "generations" / f"{name}.jsonl" for name in ("gsm8k", "gpqa")}

    for path in (trained, *evaluated.values()):
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        assert lines and all(tuple(line) == RECORD_KEYS for line in lines), path
        assert [r.to_json() for r in read_generation_records(path)] == lines
    trained_records = read_generation_records(trained)
    assert all(isinstance(r.prompt, str) and r.settings is None and r.sample == 0 for r in trained_records)
    assert all(r.settings["system_prompt"] == "Be brief." for p in evaluated.values() for r in read_generation_records(p))

    # analyze shift's reader gives each record the token ids its model saw
    tokenizer = load_tokenizer(str(tiny_model_dir))
    responses, _ = load_responses(trained, tokenizer)
    assert [r.prompt_ids for r in responses] == [runs["eval_prompt_ids"][r.id] for r in responses]
    for name, suite in zip(evaluated, suites):
        benchmark = load_benchmark(parse_benchmarks([suite])[0])
        instruction = CHOICE_INSTRUCTION if name == "gpqa" else INSTRUCTION
        _, expected = encode_prompts(tokenizer, benchmark.examples, system_prompt="Be brief.",
                                     answer_instruction=instruction, max_prompt_tokens=2048)
        responses, _ = load_responses(evaluated[name], tokenizer)
        assert [r.prompt_ids for r in responses] == expected, name
    shift = invoke("analyze", "shift", tiny_model_dir, tiny_model_dir, "-r", evaluated["gsm8k"], "-o", tmp_path / "a")
    assert shift.exit_code == 0, shift.output
    assert json.loads((tmp_path / "a" / "shift.json").read_text())["responses"] == 2

    # a run folder of an earlier version: training records with reward and length, and no prompt
    old_run = tmp_path / "old-run"
    (old_run / "eval").mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(run / name, old_run / name)
    old_keys = ("id", "answer", "completion", "score", "correct", "tokens", "truncated")
    renamed = {"score": "reward", "tokens": "length"}
    old = [{renamed.get(k, k): r.to_json()[k] for k in old_keys} for r in trained_records]
    (old_run / "eval" / "generations-step-000002.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    back = read_generation_records(old_run / "eval" / "generations-step-000002.jsonl")
    assert [(r.score, r.tokens, r.prompt) for r in back] == [(r.score, r.tokens, None) for r in trained_records]
    old_responses, _ = load_responses(old_run, tokenizer)
    assert [r.prompt_ids for r in old_responses] == [runs["eval_prompt_ids"][r.id] for r in old_responses]
    assert GenerationRecord.from_json(old[0]).correct == trained_records[0].correct
