"""Evaluation of a policy on held-out problems."""

from hybridrft.eval.accuracy import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
