"""Benchmark metrics as small pure functions: pass@k (unbiased), avg@k, and their means over problems.

With ``n`` samples of one problem of which ``c`` are correct:

- avg@n is ``c / n``, the mean accuracy of the samples (pass@1 estimated from ``n`` samples).
- pass@k is the chance that at least one of ``k`` samples drawn without replacement from the ``n``
  is correct, the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374):
  ``1 - C(n - c, k) / C(n, k)``, computed as the product ``prod_{i=n-c+1}^{n} (1 - k / i)`` so that
  large ``n`` never overflows.

A benchmark's score is the mean of the per-problem values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples, ``c`` of them correct."""
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"need n >= 1 and 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples, got n={n}")
    if n - c < k:
        return 1.0  # every draw of k samples contains a correct one
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def avg_at_k(correct: Sequence[bool | float]) -> float:
    """Mean accuracy over the samples of one problem (each sample counts 1 when correct)."""
    if not correct:
        raise ValueError("avg@k needs at least one sample")
    return sum(float(bool(x)) for x in correct) / len(correct)


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """Mean pass@k over problems given as ``(n, c)`` pairs (0.0 for no problems)."""
    values = [pass_at_k(n, c, k) for n, c in counts]
    return sum(values) / len(values) if values else 0.0


def mean_avg_at_k(counts: Iterable[tuple[int, int]]) -> float:
    """Mean of ``c / n`` over problems given as ``(n, c)`` pairs (0.0 for no problems)."""
    values = [c / n for n, c in counts]
    return sum(values) / len(values) if values else 0.0


def primary_metric_name(samples: int, temperature: float) -> str:
    """"pass@1" for one greedy sample per problem, else "avg@<samples>"."""
    return "pass@1" if samples == 1 and temperature <= 0 else f"avg@{samples}"


def default_pass_ks(samples: int) -> list[int]:
    """The pass@k columns shown when none are asked for: powers of two above 1 up to ``samples``,
    and ``samples`` itself (none for one sample: pass@1 equals avg@n)."""
    if samples <= 1:
        return []
    ks = {k for k in (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if k <= samples}
    return sorted(ks | {samples})


def parse_pass_ks(text: str | None, samples: int) -> list[int]:
    """``"1,4,8"`` -> [1, 4, 8]; None or empty -> :func:`default_pass_ks`. Each k must be in 1..samples."""
    if text is None or not text.strip():
        return default_pass_ks(samples)
    ks = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            k = int(part)
        except ValueError:
            raise ValueError(f"--pass-k takes whole numbers separated by commas, got {text!r}") from None
        if not 1 <= k <= samples:
            raise ValueError(f"pass@{k} needs at least {k} samples per problem; --samples is {samples}")
        if k not in ks:
            ks.append(k)
    return sorted(ks)


def summarize_counts(counts: Sequence[tuple[int, int]], *, samples: int, temperature: float, pass_ks: Sequence[int]) -> dict[str, float]:
    """The metrics of one benchmark: the primary one (pass@1 or avg@n) then pass@k for each k."""
    metrics = {primary_metric_name(samples, temperature): mean_avg_at_k(counts)}
    for k in pass_ks:
        metrics.setdefault(f"pass@{k}", mean_pass_at_k(counts, k))
    return metrics
