"""Bad bytes and rows in data files, one case at a time: an undecodable byte, a byte-order mark,
CRLF line ends, a 100 MB line, non-string fields, an empty demonstration list, Parquet columns of
the wrong type. Each either loads as a user would expect, or is an error naming the file, the row
and the field (`on_error="raise"`), or a skip counted in one warning (`on_error="skip"`).

Every case writes a real file to `tmp_path`: JSON lines as bytes, Parquet through pyarrow.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from hybridrft.data import load_examples, loaders

LOADER_LOGGER = "hybridrft.data.loaders"
BOM = b"\xef\xbb\xbf"


def gsm8k_line(question: str, answer: str) -> bytes:
    return json.dumps({"question": question, "answer": f"step\n#### {answer}"}).encode()


def write_lines(path: Path, lines: list[bytes], end: bytes = b"\n") -> Path:
    path.write_bytes(b"".join(line + end for line in lines))
    return path


def write_parquet(path: Path, columns: dict[str, list[Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def load_skipping(path: Path, caplog, **kwargs) -> tuple[list, list[str]]:
    """Examples loaded with on_error="skip", and the loader's warnings."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOADER_LOGGER):
        examples = load_examples(str(path), on_error="skip", **kwargs)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    return examples, warnings


def raised(path: Path, **kwargs) -> str:
    with pytest.raises(ValueError) as error:
        load_examples(str(path), **kwargs)
    return str(error.value)


def assert_one_skip_warning(warnings: list[str], path: Path, skipped: int, seen: int) -> str:
    assert len(warnings) == 1, warnings
    assert f"skipped {skipped} of {seen} rows in {path}" in warnings[0]
    return warnings[0]


# --- 1. an undecodable byte ----------------------------------------------------------------------


def test_undecodable_byte_names_file_line_and_column(tmp_path, caplog):
    # "é" is two bytes but one column; the bad byte is the 16th character of line 2.
    bad = b'{"question": "\xc3\xa9\xff?", "answer": "#### 2"}'
    lines = [gsm8k_line("a?", "1"), bad, gsm8k_line("c?", "3")]
    path = write_lines(tmp_path / "latin.jsonl", lines)
    message = raised(path)
    assert message == f"{path}, line 2: not valid UTF-8 (byte 0xff at column 16)"

    examples, warnings = load_skipping(path, caplog)
    assert [ex.prompt for ex in examples] == ["a?", "c?"]  # one bad line does not stop the rest
    assert [ex.id for ex in examples] == ["gsm8k-0", "gsm8k-2"]
    warning = assert_one_skip_warning(warnings, path, 1, 3)
    assert "line 2: not valid UTF-8 (byte 0xff at column 16)" in warning


def test_line_numbers_stay_right_after_an_undecodable_byte(tmp_path, caplog):
    lines = [b'{"question": "\xe9t\xe9", "answer": "#### 1"}', b"", gsm8k_line("b?", "2"), b"{"]
    path = write_lines(tmp_path / "mixed.jsonl", lines)
    assert raised(path).startswith(f"{path}, line 1: not valid UTF-8 (byte 0xe9 at column 15)")
    examples, warnings = load_skipping(path, caplog)
    assert [ex.prompt for ex in examples] == ["b?"]
    warning = assert_one_skip_warning(warnings, path, 2, 3)  # the blank line is not a row
    assert "line 1: not valid UTF-8" in warning and "line 4: invalid JSON" in warning


def test_undecodable_byte_in_a_json_array_file_stops_the_load(tmp_path):
    """A JSON array is parsed whole: a bad byte in it is an error for the file, even with skip."""
    text = json.dumps([{"question": "a?", "answer": "#### 1"}, {"question": "b?", "answer": "#"}])
    data = text.replace("}, {", "},\n{").replace('"b?"', '"b\xff?"').encode("latin-1")
    path = tmp_path / "rows.json"
    path.write_bytes(data)
    for on_error in ("raise", "skip"):
        message = raised(path, on_error=on_error)
        assert message == f"{path}: line 2: not valid UTF-8 (byte 0xff at column 16)"


def test_utf16_file_is_named_as_such(tmp_path):
    path = tmp_path / "notepad.jsonl"
    path.write_bytes(gsm8k_line("a?", "1").decode().encode("utf-16"))  # with its BOM
    assert raised(path, on_error="skip") == (
        f"{path}: the file is UTF-16 or UTF-32 (it starts with that byte-order mark); "
        "save it as UTF-8"
    )


# --- 2. a byte-order mark ------------------------------------------------------------------------


def test_byte_order_mark_at_the_start_of_a_jsonl_file_is_ignored(tmp_path, caplog):
    path = write_lines(tmp_path / "bom.jsonl", [BOM + gsm8k_line("a?", "1"), gsm8k_line("b?", "2")])
    examples, warnings = load_skipping(path, caplog)
    assert warnings == []
    assert [(ex.id, ex.prompt, ex.answer) for ex in examples] == [
        ("gsm8k-0", "a?", "1"),
        ("gsm8k-1", "b?", "2"),
    ]


def test_byte_order_mark_at_the_start_of_a_json_array_file_is_ignored(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(BOM + b"[" + gsm8k_line("a?", "1") + b"]")
    [example] = load_examples(str(path))
    assert (example.id, example.prompt, example.answer) == ("gsm8k-0", "a?", "1")


def test_byte_order_marks_of_concatenated_files_are_ignored(tmp_path):
    """`cat a.jsonl b.jsonl` of two files saved with a BOM has one at the start of a later line."""
    lines = [BOM + gsm8k_line("a?", "1"), BOM + gsm8k_line("b?", "2")]
    path = write_lines(tmp_path / "both.jsonl", lines)
    assert [ex.prompt for ex in load_examples(str(path))] == ["a?", "b?"]


# --- 3. CRLF line ends ---------------------------------------------------------------------------


def test_crlf_line_ends_are_accepted_and_never_reach_the_text(tmp_path, caplog):
    lines = [gsm8k_line("a?", "1"), b"", gsm8k_line("b?", "2"), b'{"question": "c?", "answer": ']
    path = write_lines(tmp_path / "windows.jsonl", lines, end=b"\r\n")
    # Line numbers count CRLF lines as an editor does.
    assert raised(path).startswith(f"{path}, line 4: invalid JSON")
    examples, warnings = load_skipping(path, caplog)
    assert_one_skip_warning(warnings, path, 1, 3)
    assert [(ex.prompt, ex.answer) for ex in examples] == [("a?", "1"), ("b?", "2")]
    assert examples[0].demonstrations == ["step\nThe answer is \\boxed{1}."]
    for example in examples:
        assert "\r" not in json.dumps(example.to_dict())


def test_crlf_json_array_and_fields_format(tmp_path):
    rows = [{"query": "x?", "gold": "7", "sol": ["so \\boxed{7}"]}]
    path = tmp_path / "windows.json"
    path.write_bytes(json.dumps(rows, indent=2).replace("\n", "\r\n").encode() + b"\r\n")
    fields = {"prompt": "query", "answer": "gold", "demonstration": "sol"}
    [example] = load_examples(str(path), fields=fields)
    assert (example.prompt, example.answer) == ("x?", "7")
    assert example.demonstrations == ["so \\boxed{7}"]


# --- 4. a 100 MB line ----------------------------------------------------------------------------


def test_100_mb_line_is_an_error_naming_its_line_or_a_counted_skip(tmp_path, caplog):
    path = tmp_path / "huge.jsonl"
    head, tail = b'{"question": "', b'", "answer": "#### 2"}'
    filler = b"x" * 2**20
    with path.open("wb") as handle:
        handle.write(gsm8k_line("a?", "1") + b"\n" + head)
        remaining = 100 * 2**20 - len(head) - len(tail)  # the line is exactly 100 MB
        while remaining > 0:
            remaining -= handle.write(filler[: min(remaining, len(filler))])
        handle.write(tail + b"\n" + gsm8k_line("c?", "3") + b"\n")
    assert loaders.MAX_LINE_BYTES == 64 * 2**20
    assert raised(path) == f"{path}, line 2: the line is 100.0 MB, longer than the limit of 64 MB"

    examples, warnings = load_skipping(path, caplog)
    assert [ex.prompt for ex in examples] == ["a?", "c?"]
    warning = assert_one_skip_warning(warnings, path, 1, 3)
    assert "line 2: the line is 100.0 MB, longer than the limit of 64 MB" in warning
    path.unlink()


@pytest.mark.parametrize("chunk", [4, 2**20])  # a line read in one piece, or in several
def test_line_length_limit_is_exact(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(loaders, "MAX_LINE_BYTES", 51)
    monkeypatch.setattr(loaders, "_LINE_CHUNK", chunk)
    at_limit = json.dumps({"question": "q" * 15, "answer": "#### 1"}).encode()
    over = json.dumps({"question": "q" * 16, "answer": "#### 1"}).encode()
    assert len(at_limit) == 51 and len(over) == 52
    path = write_lines(tmp_path / "limit.jsonl", [at_limit, over, at_limit])
    assert "line 2: the line is 0.0 MB, longer than the limit" in raised(path)
    assert len(load_examples(str(path), on_error="skip")) == 2

    path.write_bytes(at_limit)  # the last line, without a line end
    assert len(load_examples(str(path))) == 1
    path.write_bytes(at_limit + b"\n" + over)
    assert "line 2: the line is 0.0 MB" in raised(path)


# --- 5. non-string fields ------------------------------------------------------------------------


FIELDS = {"prompt": "query", "answer": "gold", "demonstration": "sol"}
GOOD_FIELDS = json.dumps({"query": "x?", "gold": "1", "sol": "so \\boxed{1}"}).encode()


def verl_line(prompt: Any, target: Any) -> bytes:
    row = {"prompt": prompt, "target": target, "reward_model": {"ground_truth": "1"}}
    return json.dumps(row).encode()


GOOD_VERL = verl_line([{"role": "user", "content": "q?"}], [{"role": "assistant", "content": "1"}])


@pytest.mark.parametrize(
    ("good", "bad", "kwargs", "message"),
    [
        (
            gsm8k_line("a?", "1"),
            json.dumps({"question": 42, "answer": "#### 1"}).encode(),
            {},
            "field 'question' must be text, got int",
        ),
        (
            gsm8k_line("a?", "1"),
            json.dumps({"question": "b?", "answer": ["#### 1"]}).encode(),
            {},
            "field 'answer' must be text, got list",
        ),
        (
            json.dumps({"problem": "p", "solution": "\\boxed{1}"}).encode(),
            json.dumps({"problem": "p", "solution": 3.5}).encode(),
            {},
            "field 'solution' must be text, got float",
        ),
        (
            GOOD_FIELDS,
            json.dumps({"query": "y?", "gold": ["x"]}).encode(),
            {"fields": FIELDS},
            "field 'gold' must be text or a number, got list",
        ),
        (
            GOOD_FIELDS,
            json.dumps({"query": "y?", "gold": True}).encode(),
            {"fields": FIELDS},
            "field 'gold' must be text or a number, got bool",
        ),
        (
            GOOD_FIELDS,
            json.dumps({"query": {"text": "y?"}, "gold": "1"}).encode(),
            {"fields": FIELDS},
            "field 'query' must be non-empty text or a list of chat messages",
        ),
        (
            GOOD_FIELDS,
            json.dumps({"query": "y?", "gold": "1", "sol": ["\\boxed{1}", 7]}).encode(),
            {"fields": FIELDS},
            "field 'sol[1]' must be text, got int",
        ),
        (
            GOOD_FIELDS,
            json.dumps({"query": "y?", "gold": "1", "sol": {"text": "\\boxed{1}"}}).encode(),
            {"fields": FIELDS},
            "field 'sol' must be text or a list of texts, got dict",
        ),
        (
            GOOD_VERL,
            verl_line([{"role": "user", "content": None}], [{"role": "assistant", "content": "1"}]),
            {},
            "field 'prompt[0].content' must be text, got NoneType",
        ),
        (
            GOOD_VERL,
            verl_line([{"role": "user", "content": "q?"}], [{"role": "assistant", "content": 1}]),
            {},
            "field 'target[0].content' must be text, got int",
        ),
    ],
    ids=[
        "gsm8k-int-question",
        "gsm8k-list-answer",
        "math-float-solution",
        "fields-list-answer",
        "fields-bool-answer",
        "fields-dict-prompt",
        "fields-int-in-demonstrations",
        "fields-dict-demonstration",
        "verl-null-prompt-content",
        "verl-int-target-content",
    ],
)
def test_non_string_field_names_file_line_and_field(tmp_path, caplog, good, bad, kwargs, message):
    path = write_lines(tmp_path / "types.jsonl", [good, bad, good])
    assert raised(path, **kwargs).startswith(f"{path}, line 2: {message}")
    examples, warnings = load_skipping(path, caplog, **kwargs)
    assert len(examples) == 2
    assert f"line 2: {message}" in assert_one_skip_warning(warnings, path, 1, 3)


def test_numbers_are_accepted_as_answers_in_fields_format(tmp_path):
    lines = [json.dumps({"query": "x?", "gold": 42}).encode(), b'{"query": "y?", "gold": 0.5}']
    path = write_lines(tmp_path / "numbers.jsonl", lines)
    examples = load_examples(str(path), fields={"prompt": "query", "answer": "gold"})
    assert [ex.answer for ex in examples] == ["42", "0.5"]


# --- 6. an empty demonstration list --------------------------------------------------------------


def test_verl_empty_target_list_in_jsonl(tmp_path, caplog):
    empty = verl_line([{"role": "user", "content": "q?"}], [])
    path = write_lines(tmp_path / "train.jsonl", [GOOD_VERL, empty, GOOD_VERL])
    assert raised(path) == f"{path}, line 2: field 'target' is an empty list"
    examples, warnings = load_skipping(path, caplog)
    assert len(examples) == 2
    assert "line 2: field 'target' is an empty list" in assert_one_skip_warning(
        warnings, path, 1, 3
    )


def test_verl_empty_target_list_in_parquet(tmp_path, caplog):
    user = [{"role": "user", "content": "q?"}]
    demo = [{"role": "assistant", "content": "\\boxed{1}"}]
    path = write_parquet(
        tmp_path / "train.parquet",
        {
            "prompt": [user, user, user],
            "target": [demo, [], demo],
            "reward_model": [{"ground_truth": "1"}] * 3,
        },
    )
    assert raised(path) == f"{path}, row 2: field 'target' is an empty list"
    examples, warnings = load_skipping(path, caplog)
    assert len(examples) == 2
    assert "row 2: field 'target' is an empty list" in assert_one_skip_warning(
        warnings, path, 1, 3
    )


def test_fields_empty_demonstration_list_is_an_error_or_a_counted_skip(tmp_path, caplog):
    """A list was meant to hold demonstrations: one with no text is an error naming file, line and
    field (or a counted skip); a null demonstration means none, counted in one warning."""
    rows = [
        {"query": "x?", "gold": "1", "sol": ["\\boxed{1}"]},
        {"query": "y?", "gold": "2", "sol": []},
        {"query": "z?", "gold": "3", "sol": ["", "  "]},
        {"query": "w?", "gold": "4", "sol": None},
    ]
    path = write_lines(tmp_path / "demos.jsonl", [json.dumps(row).encode() for row in rows])
    assert raised(path, fields=FIELDS) == f"{path}, line 2: field 'sol' is an empty list (no demonstration text)"
    examples, warnings = load_skipping(path, caplog, fields=FIELDS)
    assert [ex.demonstrations for ex in examples] == [["\\boxed{1}"], []]
    skip = next(w for w in warnings if "skipped" in w)
    assert "line 2: field 'sol' is an empty list" in skip and "line 3: field 'sol' is an empty list" in skip
    assert any("1 of 2 examples" in w and "line 4" in w for w in warnings)


def test_fields_empty_demonstration_list_without_answer_is_an_error(tmp_path, caplog):
    rows = [
        {"query": "x?", "gold": None, "sol": ["\\boxed{1}"]},
        {"query": "y?", "gold": None, "sol": None},
    ]
    path = write_lines(tmp_path / "demos.jsonl", [json.dumps(row).encode() for row in rows])
    assert raised(path, fields=FIELDS) == (
        f"{path}, line 2: answer field 'gold' is empty and no demonstration has a \\boxed{{}} "
        "answer"
    )
    examples, warnings = load_skipping(path, caplog, fields=FIELDS)
    assert len(examples) == 1 and examples[0].answer == "1"
    assert "line 2: answer field 'gold' is empty" in assert_one_skip_warning(
        warnings, path, 1, 2
    )


# --- 7. Parquet columns of the wrong type --------------------------------------------------------


@pytest.mark.parametrize(
    ("columns", "kwargs", "message"),
    [
        (
            {"question": [1, 2], "answer": ["#### 1", "#### 2"]},
            {},
            "field 'question' must be text, got int",
        ),
        (
            {"question": ["a?", "b?"], "answer": [["#### 1"], ["#### 2"]]},
            {},
            "field 'answer' must be text, got list",
        ),
        (
            {"question": [{"text": "a?"}, {"text": "b?"}], "answer": ["#### 1", "#### 2"]},
            {},
            "field 'question' must be text, got dict",
        ),
        (
            {"query": ["a?", "b?"], "gold": [["1"], ["2"]]},
            {"fields": {"prompt": "query", "answer": "gold"}},
            "field 'gold' must be text or a number, got list",
        ),
        (
            {"query": ["a?", "b?"], "gold": ["1", "2"], "sol": [[1], [2]]},
            {"fields": FIELDS},
            "field 'sol[0]' must be text, got int",
        ),
        (
            {
                "prompt": [[{"role": "user", "content": "q?"}]] * 2,
                "reward_model": ["1", "2"],
            },
            {},
            "field 'reward_model' must be a dict with 'ground_truth', got a str",
        ),
    ],
    ids=[
        "int64-question",
        "list-answer",
        "struct-question",
        "fields-list-answer",
        "fields-int-demonstrations",
        "verl-string-reward-model",
    ],
)
def test_parquet_column_of_the_wrong_type(tmp_path, caplog, columns, kwargs, message):
    path = write_parquet(tmp_path / "wrong.parquet", columns)
    assert raised(path, **kwargs) == f"{path}, row 1: {message}"
    examples, warnings = load_skipping(path, caplog, **kwargs)
    assert examples == []  # a column has one type: every row is skipped, and counted
    warning = assert_one_skip_warning(warnings, path, 2, 2)
    assert f"row 1: {message}" in warning and f"row 2: {message}" in warning


def test_parquet_wrong_type_in_some_rows_is_skipped_and_counted(tmp_path, caplog):
    """A list column where text is expected: rows whose list is null fall back to the
    demonstration's box and load; the others are skipped and counted."""
    path = write_parquet(
        tmp_path / "mixed.parquet",
        {
            "query": ["a?", "b?", "c?", "d?"],
            "gold": [None, ["2"], None, ["4"]],
            "sol": ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}", "\\boxed{4}"],
        },
    )
    assert raised(path, fields=FIELDS).startswith(f"{path}, row 2: field 'gold' must be text")
    examples, warnings = load_skipping(path, caplog, fields=FIELDS)
    assert [(ex.prompt, ex.answer) for ex in examples] == [("a?", "1"), ("c?", "3")]
    warning = assert_one_skip_warning(warnings, path, 2, 4)
    assert "row 2: field 'gold'" in warning and "row 4: field 'gold'" in warning


def test_file_that_is_not_parquet_names_the_file(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(gsm8k_line("a?", "1") + b"\n")
    assert re.match(re.escape(f"{path}: not a readable Parquet file: "), raised(path))


# --- other JSON that cannot be parsed ------------------------------------------------------------


def test_deeply_nested_json_line_is_bad_json_not_a_crash(tmp_path, caplog):
    path = write_lines(tmp_path / "deep.jsonl", [gsm8k_line("a?", "1"), b'{"q": ' + b"[" * 100_000])
    assert raised(path) == f"{path}, line 2: invalid JSON: value nested too deeply (column 1)"
    examples, warnings = load_skipping(path, caplog)
    assert len(examples) == 1
    assert_one_skip_warning(warnings, path, 1, 2)
