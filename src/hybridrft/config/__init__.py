"""Typed configuration and YAML recipes with dotted overrides (the lowest layer)."""

from hybridrft.config.loading import ConfigError, config_to_dict, config_to_yaml, load_config, parse_override
from hybridrft.config.schema import (
    DEFAULT_ANSWER_INSTRUCTION,
    DEFAULT_MODEL,
    Config,
    DataConfig,
    EvalConfig,
    GRPOConfig,
    LossConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    SASRConfig,
    SFTConfig,
    SRFTConfig,
    TrainConfig,
)

__all__ = [
    "DEFAULT_ANSWER_INSTRUCTION",
    "DEFAULT_MODEL",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GRPOConfig",
    "LossConfig",
    "ModelConfig",
    "RewardConfig",
    "RolloutConfig",
    "SASRConfig",
    "SFTConfig",
    "SRFTConfig",
    "TrainConfig",
    "config_to_dict",
    "config_to_yaml",
    "load_config",
    "parse_override",
]
