"""Evaluation results: ``results.json``, ``results.md`` and the terminal table (one row per benchmark)."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hybridrft.eval.runner import BenchmarkResult


def metric_columns(results: list[BenchmarkResult]) -> list[str]:
    """Metric names in table order: the primary metric (pass@1 or avg@n) first, then pass@k by k."""
    names: list[str] = []
    for result in results:
        names.extend(name for name in result.metrics if name not in names)
    return names


def average_metrics(results: list[BenchmarkResult]) -> dict[str, float]:
    """Unweighted mean over benchmarks of each metric (the papers' "Avg." column)."""
    average = {}
    for name in metric_columns(results):
        values = [r.metrics[name] for r in results if name in r.metrics]
        if len(values) == len(results):
            average[name] = sum(values) / len(values)
    return average


def _rows(results: list[BenchmarkResult]) -> tuple[list[str], list[list[str]]]:
    metrics = metric_columns(results)
    header = ["benchmark", "problems", *metrics, "mean response tokens", "truncated"]
    rows = [
        [
            r.name,
            str(r.problems),
            *(f"{100 * r.metrics[m]:.1f}" if m in r.metrics else "" for m in metrics),
            f"{r.mean_response_tokens:.1f}",
            f"{100 * r.truncated:.1f}%",
        ]
        for r in results
    ]
    if len(results) > 1:
        average = average_metrics(results)
        rows.append(["average", "", *(f"{100 * average[m]:.1f}" if m in average else "" for m in metrics), "", ""])
    return header, rows


def results_table(results: list[BenchmarkResult], title: str | None = None):
    """A rich Table: one row per benchmark (metrics in %), plus the average of several."""
    from rich.table import Table

    header, rows = _rows(results)
    table = Table(title=title)
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=i == 0 or column.startswith(("pass@", "avg@")))
    for i, row in enumerate(rows):
        table.add_row(*row, end_section=len(results) > 1 and i == len(results) - 1)
    return table


def results_markdown(model: str, settings: dict[str, Any], results: list[BenchmarkResult]) -> str:
    header, rows = _rows(results)
    lines = [f"# Evaluation of `{model}`", ""]
    temperature = settings.get("temperature", 0.0)
    decoding = "greedy" if not temperature else f"temperature {temperature}, top-p {settings.get('top_p', 1.0)}"
    lines.append(f"{settings.get('samples', 1)} sample(s) per problem, {decoding}; metrics in %.")
    lines.append("")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |")
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    lines.append("")
    lines.append("| benchmark | source | max new tokens | answered | generations |")
    lines.append("| --- | --- | ---: | ---: | --- |")
    for r in results:
        lines.append(
            f"| {r.name} | `{r.source}` | {r.max_new_tokens} | {100 * r.answered:.1f}% | [{r.generations}]({r.generations}) |"
        )
    return "\n".join(lines) + "\n"


def write_results(
    output_dir: str | Path, *, model: str, model_path: str, settings: dict[str, Any], results: list[BenchmarkResult]
) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` (atomically: a kill never leaves half a file)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "model": model,
        "model_path": model_path,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": settings,
        "benchmarks": {r.name: r.to_dict() for r in results},
        "generated_this_run": sum(r.generated_this_run for r in results),
    }
    if len(results) > 1:
        summary["average"] = average_metrics(results)
    json_path = output_dir / "results.json"
    md_path = output_dir / "results.md"
    _write_atomic(json_path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    _write_atomic(md_path, results_markdown(model, settings, results))
    return json_path, md_path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
