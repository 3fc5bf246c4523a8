"""`hybridrft eval`: metrics against hand-computed values, letter extraction, seeded option order,
suite loading, and the command end to end on the tiny random Llama (resume included)."""

from __future__ import annotations

import json
import math

import pytest
import typer
from typer.testing import CliRunner

from hybridrft.cli.eval_cmd import evaluate_command
from hybridrft.eval import (
    SUITES,
    BenchmarkError,
    arrange_options,
    avg_at_k,
    default_pass_ks,
    find_suite,
    load_benchmark,
    mean_avg_at_k,
    mean_pass_at_k,
    option_permutation,
    parse_benchmarks,
    parse_pass_ks,
    pass_at_k,
    read_generations,
    summarize_counts,
)
from hybridrft.eval.choice import LETTERS
from hybridrft.rewards import choice_answer_reward, extract_choice_letter, get_reward
from hybridrft.rewards.choice_reward import choice_reward

app = typer.Typer(add_completion=False)
app.command()(evaluate_command)
runner = CliRunner()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# --- metrics ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 2 / 5),
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (10, 3, 4, 1 - 35 / 210),  # 1 - C(7,4)/C(10,4)
        (4, 0, 2, 0.0),
        (4, 4, 4, 1.0),
        (3, 2, 2, 1.0),  # n - c < k: every pair holds a correct sample
    ],
)
def test_pass_at_k_matches_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_is_stable_for_large_n():
    expected = 1 - math.comb(990, 100) / math.comb(1000, 100)
    assert pass_at_k(1000, 10, 100) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_avg_at_k_and_means_over_problems():
    assert avg_at_k([True, False, True, True]) == 0.75
    assert mean_avg_at_k([(4, 3), (4, 0)]) == 0.375
    assert mean_pass_at_k([(5, 2), (4, 1)], 1) == pytest.approx((0.4 + 0.25) / 2)
    assert mean_pass_at_k([(4, 1), (4, 0)], 2) == pytest.approx((1 - 3 / 6) / 2)  # 1 - C(3,2)/C(4,2)
    metrics = summarize_counts([(4, 1), (4, 0)], samples=4, temperature=0.6, pass_ks=[1, 2])
    assert list(metrics) == ["avg@4", "pass@1", "pass@2"]
    assert metrics["avg@4"] == metrics["pass@1"] == 0.125
    assert summarize_counts([(1, 1), (1, 0)], samples=1, temperature=0.0, pass_ks=[]) == {"pass@1": 0.5}


def test_pass_k_lists():
    assert default_pass_ks(1) == [] and default_pass_ks(8) == [2, 4, 8] and default_pass_ks(6) == [2, 4, 6]
    assert parse_pass_ks("8, 1,4", 8) == [1, 4, 8]
    with pytest.raises(ValueError, match="pass@16 needs at least 16"):
        parse_pass_ks("1,16", 8)


# --- multiple choice ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Reasoning... so the answer is \\boxed{C}.", "C"),
        ("first \\boxed{A}, on reflection \\boxed{(B)}", "B"),
        ("\\boxed{\\text{D}}", "D"),
        ("\\boxed{b}", "B"),
        ("\\boxed{B. Paris}", "B"),
        ("\\boxed{Paris}", None),  # the last box is the answer, and it is no letter
        ("The answer is (C).", "C"),
        ("Answer: D", "D"),
        ("I considered A. The correct answer is: **B**", "B"),
        ("The answer is Alice", None),
        ("After checking each option:\n\nC", "C"),
        ("so it must be (A)", "A"),
        ("no idea", None),
    ],
)
def test_extract_choice_letter(text, expected):
    assert extract_choice_letter(text) == expected


def test_choice_letters_outside_the_options_are_ignored():
    assert extract_choice_letter("Answer: I think it is C") == "I"
    assert extract_choice_letter("Answer: I think it is C", num_choices=4) == "C"
    assert extract_choice_letter("\\boxed{E}", num_choices=4) is None


def test_choice_reward_compares_letters():
    assert get_reward("choice") is choice_reward is choice_answer_reward
    completions = ["\\boxed{B}", "The answer is (a)", "Answer: C", [{"role": "assistant", "content": "\\boxed{D}"}]]
    assert choice_reward(None, completions, ["b", "A", "(C)", "A"]) == [1.0, 0.0, 1.0, 0.0]
    assert choice_reward(None, ["\\boxed{A}"], ["not a letter"]) == [0.0]


def test_shuffled_options_are_seeded_and_the_gold_letter_follows():
    options = ["right", "wrong 1", "wrong 2", "wrong 3", "wrong 4"]
    first = arrange_options(options, 0, seed=3, key="gpqa/q1")
    assert arrange_options(options, 0, seed=3, key="gpqa/q1") == first
    assert sorted(first.permutation) == list(range(5))
    assert first.options == [options[i] for i in first.permutation]
    assert first.options[LETTERS.index(first.gold_letter)] == "right"
    orders = {tuple(option_permutation(5, seed=seed, key="gpqa/q1")) for seed in range(10)}
    assert len(orders) > 1  # the seed matters
    kept = arrange_options(options, 2, seed=3, key="gpqa/q1", shuffle=False)
    assert kept.options == options and kept.gold_letter == "C"


# --- suites and loading ---------------------------------------------------------------------------


def test_suites_and_aliases():
    assert {"gsm8k", "math500", "aime24", "amc23", "minerva", "olympiadbench", "arc_c", "gpqa", "mmlu_pro"} <= set(SUITES)
    assert find_suite("MATH-500").name == "math500" and find_suite("gpqa_diamond").name == "gpqa"
    with pytest.raises(BenchmarkError, match="did you mean 'math500'"):
        parse_benchmarks(["math50"])
    with pytest.raises(BenchmarkError, match="did you mean 'question'"):
        parse_benchmarks(["arc_c=x.jsonl"], fields=["arc_c.questoin=q"])
    specs = parse_benchmarks(["gsm8k=a.jsonl", "mine=b.jsonl"], data="c.jsonl", fields=["mine.question=q", "mine.choices=o", "mine.answer=a"])
    assert [(s.name, s.answer_type) for s in specs] == [("gsm8k", "math"), ("mine", "choice"), ("custom", "math")]


def test_multiple_choice_layouts_load(tmp_path):
    arc = write_jsonl(tmp_path / "arc.jsonl", [
        {"id": "q1", "question": "Sky colour?", "choices": {"text": ["red", "blue", "green"], "label": ["1", "2", "3"]}, "answerKey": "2"},
    ])
    mmlu = write_jsonl(tmp_path / "mmlu.jsonl", [
        {"question_id": 7, "question": "2+2?", "options": ["3", "4", "5", "6"], "answer": "B", "answer_index": 1},
    ])
    gpqa = tmp_path / "gpqa.csv"  # GPQA is distributed as CSV
    gpqa.write_text("Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\nQ?, yes ,no,maybe,never\n")
    for path, gold_text in ((arc, "blue"), (mmlu, "4"), (gpqa, "yes")):
        name = path.stem.replace("mmlu", "mmlu_pro").replace("arc", "arc_c")
        bench = load_benchmark(parse_benchmarks([f"{name}={path}"])[0], seed=1)
        (example,) = bench.examples
        assert bench.answer_type == "choice"
        choices = example.meta["choices"]
        assert choices[LETTERS.index(example.answer)] == gold_text
        assert f"{example.answer}. {gold_text}" in example.prompt


def test_math_suite_answers_and_missing_columns(tmp_path):
    math500 = write_jsonl(tmp_path / "m.jsonl", [
        {"problem": "1/2+1/2?", "solution": "It is \\boxed{1}.", "answer": ""},
        {"problem": "x?", "solution": "...", "answer": "$\\frac{1}{2}$"},
    ])
    bench = load_benchmark(parse_benchmarks([f"math500={math500}"])[0])
    assert [e.answer for e in bench.examples] == ["1", "\\frac{1}{2}"]
    olympiad = write_jsonl(tmp_path / "o.jsonl", [{"question": "q", "final_answer": ["$3$"]}, {"question": "r", "final_answer": [2.0]}])
    assert [e.answer for e in load_benchmark(parse_benchmarks([f"olympiadbench={olympiad}"])[0]).examples] == ["3", "2"]
    with pytest.raises(BenchmarkError, match=r"column 'problem' / .* \(for prompt\) not found.*--field aime24.prompt"):
        load_benchmark(parse_benchmarks([f"aime24={write_jsonl(tmp_path / 'a.jsonl', [{'Problm': 'q', 'answer': '1'}])}"])[0])


def test_read_generations_ignores_a_half_written_last_line(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text('{"id": "a", "sample": 0}\n{"id": "b", "sample": 0}\n{"id": "c", "sam')
    assert [r["id"] for r in read_generations(path)] == ["a", "b"]
    assert path.read_text().endswith('"sam')  # reading alone changes nothing
    assert len(read_generations(path, repair=True)) == 2
    assert path.read_text() == '{"id": "a", "sample": 0}\n{"id": "b", "sample": 0}\n'


def test_a_run_or_checkpoint_folder_stands_for_its_model(tmp_path):
    from hybridrft.models import resolve_model_path as resolve_model_dir

    run = tmp_path / "run"
    for folder in ("checkpoints/step-000002/model", "checkpoints/step-000010/model"):
        (run / folder).mkdir(parents=True)
        (run / folder / "config.json").write_text("{}")
    assert resolve_model_dir(str(run)) == str(run / "checkpoints/step-000010/model")
    assert resolve_model_dir(str(run / "checkpoints/step-000002")) == str(run / "checkpoints/step-000002/model")
    (run / "final_model").mkdir()
    (run / "final_model/config.json").write_text("{}")
    assert resolve_model_dir(str(run)) == str(run / "final_model")
    # a hub id passes through once the hub answers for it (tests/test_model_errors.py covers the rest)


# --- the command, end to end on the tiny model ------------------------------------------------------


@pytest.fixture
def benchmarks(tmp_path):
    math_rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(4)]
    mc_rows = [
        {"Question": f"Which number is {i}?", "Correct Answer": str(i), "Incorrect Answer 1": "x",
         "Incorrect Answer 2": "y", "Incorrect Answer 3": "z"}
        for i in range(3)
    ]
    return write_jsonl(tmp_path / "math.jsonl", math_rows), write_jsonl(tmp_path / "mc.jsonl", mc_rows)


def test_eval_writes_results_and_generations(tmp_path, tiny_model_dir, benchmarks):
    """gsm8k resumes from generations already in the output folder (3 of 4 correct: pass@1 is 0.75,
    nothing generated); gpqa is generated fresh, and checked record by record."""
    math_file, mc_file = benchmarks
    out = tmp_path / "out"
    settings = {"model": str(tiny_model_dir), "temperature": 0.0, "top_p": 1.0, "max_new_tokens": 4, "seed": 0,
                "system_prompt": None, "shuffle_options": True}
    written = [
        {"id": f"gsm8k-{i}", "sample": 0, "correct": i != 1, "score": 0.0 if i == 1 else 1.0,
         "extracted": None if i == 1 else str(2 * i), "answer": str(2 * i),
         "completion": "no idea" if i == 1 else f"\\boxed{{{2 * i}}}", "tokens": 2, "truncated": False,
         "finished": True, "prompt": f"What is {i} + {i}?", "settings": settings}
        for i in range(4)
    ]
    (out / "generations").mkdir(parents=True)
    math_path = write_jsonl(out / "generations" / "gsm8k.jsonl", written)
    before = math_path.read_bytes()

    result = runner.invoke(app, [str(tiny_model_dir), "--suite", f"gsm8k={math_file}", "--suite", f"gpqa={mc_file}",
                                 "--max-new-tokens", "4", "--batch-size", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "gsm8k" in result.output and "gpqa" in result.output and "pass@1" in result.output
    summary = json.loads((out / "results.json").read_text())
    gsm8k, gpqa = summary["benchmarks"]["gsm8k"], summary["benchmarks"]["gpqa"]
    assert (gsm8k["problems"], gsm8k["answer_type"], gsm8k["generated_this_run"], gsm8k["reused"]) == (4, "math", 0, 4)
    assert gsm8k["metrics"] == {"pass@1": 0.75}
    assert (gsm8k["mean_response_tokens"], gsm8k["truncated"], gsm8k["answered"]) == (2.0, 0.0, 0.75)
    assert math_path.read_bytes() == before  # read back, nothing appended
    assert (gpqa["problems"], gpqa["answer_type"], gpqa["generated_this_run"], gpqa["reused"]) == (3, "choice", 3, 0)
    assert summary["generated_this_run"] == 3
    assert "| gsm8k | 4 | 75.0 |" in (out / "results.md").read_text()

    mc_records = read_generations(out / "generations" / "gpqa.jsonl")
    assert [r["id"] for r in mc_records] == ["gpqa-0", "gpqa-1", "gpqa-2"]
    for record in mc_records:
        assert record["choices"][LETTERS.index(record["answer"])] == record["id"].split("-")[-1]
        assert sorted(record["permutation"]) == [0, 1, 2, 3]
        assert 0 < record["tokens"] <= 4 and record["settings"] == settings
        # the score is the choice reward of the completion against the gold letter
        assert record["score"] == choice_reward(None, [record["completion"]], [record["answer"]], num_choices=[4])[0]
        assert record["correct"] == (record["score"] >= 1.0)
        assert record["extracted"] == extract_choice_letter(record["completion"], 4)
    assert gpqa["metrics"]["pass@1"] == sum(r["correct"] for r in mc_records) / 3


def test_interrupted_eval_resumes_with_only_the_missing_generations(tmp_path, tiny_model_dir, benchmarks):
    """Killed half-way through a problem's samples, then resumed: the same records as one straight
    run with another batch size (a problem's samples depend on the seed and the problem only)."""
    math_file, _ = benchmarks
    out = tmp_path / "out"
    args = [str(tiny_model_dir), "--data", str(math_file), "--samples", "2", "--temperature", "0.8", "--pass-k", "1,2",
            "--max-new-tokens", "3", "--batch-size", "3", "-o", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    path = out / "generations" / "custom.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 8  # 4 problems x 2 samples
    path.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])  # killed while writing line 4

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = read_generations(path)
    keys = [(r["id"], r["sample"]) for r in records]
    assert len(keys) == 8 and set(keys) == {(f"gsm8k-{i}", s) for i in range(4) for s in range(2)}
    summary = json.loads((out / "results.json").read_text())["benchmarks"]["custom"]
    assert (summary["generated_this_run"], summary["reused"]) == (5, 3)
    assert list(summary["metrics"]) == ["avg@2", "pass@1", "pass@2"]

    straight = tmp_path / "straight"
    assert runner.invoke(app, [*args[:-4], "--batch-size", "8", "-o", str(straight)]).exit_code == 0
    by_key = lambda rows: {(r["id"], r["sample"]): r["completion"] for r in rows}  # noqa: E731
    assert by_key(records) == by_key(read_generations(straight / "generations" / "custom.jsonl"))
    assert len(set(by_key(records).values())) > 1  # sampled: the comparison is not between constants

    assert runner.invoke(app, args).exit_code == 0  # complete: nothing left to generate
    assert json.loads((out / "results.json").read_text())["generated_this_run"] == 0
    changed = runner.invoke(app, [*args[:-2], "--temperature", "0.5", "-o", str(out)])
    assert changed.exit_code == 2 and "other settings" in changed.output


@pytest.mark.parametrize(
    ("suite_arg", "fields", "message"),
    [
        ("gsm8kk", [], "did you mean 'gsm8k'"),
        ("gsm8k={tmp}/nope.jsonl", [], "nope.jsonl"),
        ("gpqa={math}", [], "column 'Correct Answer' (for correct) not found"),
        ("mine={math}", ["--field", "prompt=query", "--field", "answer=answer"], "column 'query' (for prompt) not found"),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, tiny_model_dir, benchmarks, suite_arg, fields, message):
    math_file, _ = benchmarks
    spec = suite_arg.format(tmp=tmp_path, math=math_file)
    result = runner.invoke(app, [str(tiny_model_dir), "--suite", spec, *fields, "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_list_suites_needs_no_model():
    result = runner.invoke(app, ["--list-suites"])
    assert result.exit_code == 0
    assert "math500" in result.output and "GPQA-Diamond" in result.output


def test_eval_counts_correct_with_the_given_threshold(tmp_path, tiny_model_dir, benchmarks):
    math_file, _ = benchmarks
    args = [str(tiny_model_dir), "--suite", f"gsm8k={math_file}", "--max-new-tokens", "3", "--batch-size", "4"]
    # a random tiny model answers nothing: every score is 0, so at threshold 1 nothing is correct ...
    assert runner.invoke(app, [*args, "-o", str(tmp_path / "strict")]).exit_code == 0
    strict = read_generations(tmp_path / "strict" / "generations" / "gsm8k.jsonl")
    assert [r["score"] for r in strict] == [0.0] * 4 and not any(r["correct"] for r in strict)
    # ... and at threshold 0 everything is (one rule, reward.correct_threshold, in training and here)
    assert runner.invoke(app, [*args, "--correct-threshold", "0", "-o", str(tmp_path / "loose")]).exit_code == 0
    loose = json.loads((tmp_path / "loose" / "results.json").read_text())
    assert loose["benchmarks"]["gsm8k"]["metrics"]["pass@1"] == 1.0
