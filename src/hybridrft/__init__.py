"""hybridrft: single-run SFT + RL post-training for reasoning (SRFT, SASR and their baselines)."""

__version__ = "0.1.0"
