"""Read examples from files, `datasets` folders or the Hugging Face hub, and split off a holdout.

Errors a user can cause (a missing file, bad JSON, bytes that are not UTF-8, an overlong line, a
wrong column name, a malformed row) name the source and the row, and no row is ever dropped without
being counted in a warning. JSON files are read as bytes and decoded line by line, so one bad line
does not stop the others from loading and line numbers stay what an editor shows.
"""

from __future__ import annotations

import codecs
import difflib
import functools
import json
import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from hybridrft.data.adapters import (
    ADAPTERS,
    FIELD_KEYS,
    VERL_TARGET,
    check_field_mapping,
    detect_format,
    fields_example,
    required_columns,
    verl_example,
)
from hybridrft.data.example import Example

logger = logging.getLogger(__name__)

FORMATS = ("auto", *ADAPTERS, "fields")
ERROR_MODES = ("raise", "skip")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
# Suffixes that mark a source as a file path, not a hub id, even when the file is missing.
_PATH_SUFFIXES = {*FILE_SUFFIXES, ".tsv", ".txt", ".arrow", ".gz", ".zip"}
_REASONS_SHOWN = 3
# The longest JSON line read; a longer one is an error naming its line (or a counted skip) rather
# than a string of that size held in memory. At most this much of such a line is read at once.
MAX_LINE_BYTES = 64 * 2**20
_MB = 2**20
_LINE_CHUNK = 2**20  # lines are read this much at a time
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # a UTF-32 BOM starts with one of these


@dataclass
class RawRow:
    """One row as read, or the reason it could not be read (bad JSON, not an object)."""

    where: str  # "line 7" for JSON lines, "row 7" otherwise; both 1-based
    data: dict[str, Any] | None
    problem: str | None = None


def _looks_like_path(source: str) -> bool:
    """Whether a missing `source` should be reported as a missing path rather than sent to the hub.

    Hub ids look like `owner/name` (one slash), so a single slash alone does not make a path;
    a data-file suffix, a leading `/`, `.` or `~`, a backslash or a second slash does.
    """
    return (
        Path(source).suffix.lower() in _PATH_SUFFIXES
        or source.startswith(("/", ".", "~"))
        or "\\" in source
        or source.count("/") >= 2
    )


def _not_utf8(data: bytes, error: UnicodeDecodeError, line_start: int = 0) -> str:
    """"not valid UTF-8 (byte 0xff at column 12)"; the column counts characters, as editors do."""
    column = len(data[line_start : error.start].decode("utf-8")) + 1  # valid up to error.start
    return f"not valid UTF-8 (byte 0x{data[error.start]:02x} at column {column})"


def _parse_json(text: str) -> Any:
    """`json.loads`, with a too deeply nested value reported as bad JSON, not a RecursionError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("value nested too deeply", text, 0) from None


def _json_rows(path: Path) -> Iterator[RawRow]:
    """Rows of a JSON array file or a JSON-lines file (whatever its suffix); blank lines skipped.

    A UTF-8 byte-order mark (at the start of the file, or of a line, as when such files are
    concatenated) and CRLF line ends are accepted. A JSON-lines file is read line by line as
    bytes: a line that is not UTF-8, is not JSON or is longer than `MAX_LINE_BYTES` is one bad
    row. A JSON array is read whole, so any such problem in it is an error for the whole file.
    """
    with path.open("rb") as handle:
        head = handle.read(4096)
    if head.startswith(_UTF16_BOMS):
        raise ValueError(
            f"{path}: the file is UTF-16 or UTF-32 (it starts with that byte-order mark); "
            "save it as UTF-8"
        )
    if head.removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"["):
        yield from _json_array_rows(path)
        return
    with path.open("rb") as handle:
        for line_number, line, size in _lines(handle):
            where = f"line {line_number}"
            if line is None:
                yield RawRow(
                    where,
                    None,
                    f"the line is {size / _MB:.1f} MB, longer than the limit of "
                    f"{MAX_LINE_BYTES / _MB:g} MB",
                )
                continue
            data = line.rstrip(b"\r\n").removeprefix(codecs.BOM_UTF8)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield RawRow(where, None, _not_utf8(data, exc))
                continue
            if not text.strip():
                continue
            try:
                row = _parse_json(text)
            except json.JSONDecodeError as exc:
                yield RawRow(where, None, f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            yield _object_row(where, row)


def _lines(handle: BinaryIO) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, line, size in bytes without the line end) for each line of a binary file; the
    line is None when longer than `MAX_LINE_BYTES`, and then no more than that is held at once."""
    line_number = 0
    while piece := handle.readline(_LINE_CHUNK):
        line_number += 1
        pieces: list[bytes] | None = [piece]
        size = len(piece)
        while not piece.endswith(b"\n") and (piece := handle.readline(_LINE_CHUNK)):
            size += len(piece)
            if pieces is not None:
                pieces.append(piece)
                if size > MAX_LINE_BYTES + 1:  # too long even with its "\n": keep only counting
                    pieces = None
        size -= piece.endswith(b"\n")
        if size > MAX_LINE_BYTES or pieces is None:
            yield line_number, None, size
        else:
            yield line_number, pieces[0] if len(pieces) == 1 else b"".join(pieces), size


def _json_array_rows(path: Path) -> Iterator[RawRow]:
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}: line {line}: {_not_utf8(data, exc, line_start)}") from None
    try:
        rows = _parse_json(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from None
    for number, row in enumerate(rows, start=1):
        yield _object_row(f"row {number}", row)


def _object_row(where: str, row: Any) -> RawRow:
    if isinstance(row, dict):
        return RawRow(where, row)
    return RawRow(where, None, f"expected a JSON object, got {type(row).__name__}")


def _parquet_rows(path: Path) -> Iterator[RawRow]:
    """Rows of a Parquet file as Python values (a column of the wrong type reaches the adapter,
    which names the field); a file pyarrow cannot read is an error naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
    except pa.ArrowException as exc:
        raise ValueError(f"{path}: not a readable Parquet file: {exc}") from None
    number = 0
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except pa.ArrowException as exc:
            raise ValueError(f"{path}: cannot read the rows after row {number}: {exc}") from None
        for row in batch.to_pylist():
            number += 1
            yield RawRow(f"row {number}", row)


def _csv_rows(path: Path) -> Iterator[RawRow]:
    """Rows of a CSV file with a header line, every value as text; "line N" is the editor's line of
    the row's start (a quoted value may span lines)."""
    import csv

    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        start = 2
        for row in reader:
            yield RawRow(f"line {start}", dict(row))
            start = reader.line_num + 1


def _dataset_rows(dataset: Any) -> Iterator[RawRow]:
    for number, row in enumerate(dataset, start=1):
        yield RawRow(f"row {number}", dict(row))


def _pick_split(loaded: Any, split: str, source: str) -> Any:
    """A `DatasetDict` holds several splits; a plain `Dataset` is the split."""
    import datasets

    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if split not in loaded:
            raise ValueError(f"{source} has no split {split!r}; splits: {sorted(loaded.keys())}")
        return loaded[split]
    return loaded


def read_rows(source: str, split: str, config: str | None = None) -> Iterator[RawRow]:
    """Every row of a source as read (a file, a save_to_disk folder, a hub id with its ``config``
    when it has several), before any adapter; a row that cannot be read carries its problem instead
    of data."""
    path = Path(source).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            return _json_rows(path)
        if suffix == ".parquet":
            return _parquet_rows(path)
        if suffix == ".csv":
            return _csv_rows(path)
        raise ValueError(
            f"{source}: unsupported file type {suffix!r}; use {', '.join(FILE_SUFFIXES)}, a folder "
            "written by datasets.Dataset.save_to_disk, or a Hugging Face dataset id"
        )
    saved_markers = ("state.json", "dataset_dict.json")  # written by save_to_disk
    if path.is_dir() and any((path / marker).is_file() for marker in saved_markers):
        import datasets

        return _dataset_rows(_pick_split(datasets.load_from_disk(str(path)), split, source))
    if not path.exists() and _looks_like_path(source):
        raise FileNotFoundError(f"data source not found: {source}")
    import datasets

    # A hub id, or a local folder of data files that `datasets` knows how to read.
    return _dataset_rows(datasets.load_dataset(source, config, split=split))


def _missing_column_error(name: str, role: str, columns: list[str], source: str) -> ValueError:
    close = difflib.get_close_matches(name, columns, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ValueError(
        f"{source}: column {name!r} (for {role}) not found; columns are {columns}{hint}"
    )


def _choose_adapter(
    format: str, fields: Mapping[str, str] | None, columns: list[str], source: str
) -> tuple[str, Callable[[Mapping[str, Any], int], Example]]:
    """Resolve "auto", and check the needed columns once, so a typo is one clear error."""
    if format == "auto":
        format = "fields" if fields is not None else detect_format(columns)
    if format == "fields":
        if fields is None:
            raise ValueError(
                f"{source}: unknown data layout; pass fields={{'prompt': ..., 'answer': ..., "
                f"'demonstration': ...}} naming its columns; columns are {columns}"
            )
        check_field_mapping(fields)
        for role in FIELD_KEYS:
            if role in fields and fields[role] not in columns:
                raise _missing_column_error(fields[role], role, columns, source)
        return format, functools.partial(fields_example, fields=fields)
    if fields is not None:
        raise ValueError(f"fields= is only used with format='fields' (got format={format!r})")
    for column in sorted(required_columns(format)):
        if column not in columns:
            raise _missing_column_error(column, f"format {format!r}", columns, source)
    if format == "verl":
        # A source with a target column is training data: then every row needs its demonstration.
        return format, functools.partial(verl_example, require_target=VERL_TARGET in columns)
    return format, ADAPTERS[format]


def load_examples(
    source: str,
    *,
    format: str = "auto",
    fields: Mapping[str, str] | None = None,
    split: str = "train",
    limit: int | None = None,
    on_error: str = "raise",
) -> list[Example]:
    """Load examples from a `.jsonl` / `.json` / `.parquet` file, a `save_to_disk` folder, or
    anything `datasets.load_dataset(source, split=split)` accepts (a hub id, a data folder).

    `format` is "auto" (from the first row's columns), "gsm8k", "math", "verl" or "fields" (then
    `fields` maps Example fields to columns; "auto" with `fields` given means "fields"). `split`
    applies to `datasets` sources only. `limit` keeps the first `limit` valid examples.
    `on_error="raise"` stops at the first malformed row; "skip" skips such rows and logs one
    warning with their count and the first few reasons. Row numbers are 1-based; in JSON-lines
    files they are line numbers, which is what an editor shows. With `format="fields"` and a
    demonstration column, rows loaded without a demonstration are counted in one warning too.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {list(FORMATS)}")
    if on_error not in ERROR_MODES:
        raise ValueError(f"on_error must be one of {list(ERROR_MODES)}, got {on_error!r}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")

    source = os.fspath(source)
    rows = read_rows(source, split)
    examples: list[Example] = []
    skipped: list[str] = []
    without_demonstration: list[str] = []  # fields format: rows loaded with no demonstration
    seen = 0
    adapter = None
    demo_column = None  # the fields format's demonstration column, if one is mapped
    for index, raw in enumerate(rows):
        if limit is not None and len(examples) >= limit:
            break
        seen += 1
        problem = raw.problem
        if raw.data is not None:
            if adapter is None:
                format, adapter = _choose_adapter(format, fields, list(raw.data), source)
                if format == "fields" and fields:
                    demo_column = fields.get("demonstration")
            try:
                example = adapter(raw.data, index)
            except ValueError as exc:
                problem = str(exc)
            else:
                examples.append(example)
                if demo_column and not example.demonstrations:
                    without_demonstration.append(raw.where)
        if problem is None:
            continue
        if on_error == "raise":
            raise ValueError(f"{source}, {raw.where}: {problem}")
        skipped.append(f"{raw.where}: {problem}")

    if seen == 0 and limit != 0:
        raise ValueError(f"{source} has no rows")
    if skipped:
        reasons = "; ".join(skipped[:_REASONS_SHOWN])
        hidden = len(skipped) - _REASONS_SHOWN
        more = f"; ... ({hidden} more)" if hidden > 0 else ""
        logger.warning(
            "skipped %d of %d rows in %s: %s%s", len(skipped), seen, source, reasons, more
        )
    if without_demonstration:
        shown = ", ".join(without_demonstration[:_REASONS_SHOWN])
        hidden = len(without_demonstration) - _REASONS_SHOWN
        more = f", ... ({hidden} more)" if hidden > 0 else ""
        logger.warning(
            "%d of %d examples from %s have no demonstration (field %r is null or empty: %s%s); a method that trains on demonstrations stops at such an example",
            len(without_demonstration),
            len(examples),
            source,
            demo_column,
            shown,
            more,
        )
    logger.info("loaded %d examples from %s (format %s)", len(examples), source, format)
    return examples


def split_holdout(
    examples: list[Example], holdout: int, seed: int
) -> tuple[list[Example], list[Example]]:
    """Split into (train, heldout) with `holdout` examples chosen by a seeded shuffle.

    The same seed holds out the same examples; both parts keep the input order, so the held-out
    ids can be listed next to a benchmark result and the training order stays the caller's.
    """
    if not 0 <= holdout <= len(examples):
        raise ValueError(f"holdout must be between 0 and {len(examples)}, got {holdout}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:holdout])
    train = [ex for i, ex in enumerate(examples) if i not in held]
    heldout = [ex for i, ex in enumerate(examples) if i in held]
    return train, heldout
