"""Configs: recipes, dotted overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridrft.config import ConfigError, load_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


def test_defaults_and_typed_overrides():
    config = load_config(overrides=["train.max_steps=20", "srft.policy_shaping_gamma=0.1", "reward.functions=[math,format]",
                                    "reward.weights=[1.0,0.1]", "data.fields.prompt=question", "model.gradient_checkpointing=true"])
    assert config.train.max_steps == 20 and isinstance(config.train.max_steps, int)
    assert config.srft.policy_shaping_gamma == 0.1
    assert config.reward.functions == ["math", "format"]
    assert config.data.fields == {"prompt": "question"}
    assert config.model.gradient_checkpointing is True
    # Dr. GRPO's L_max covers demonstrations as well as rollouts
    assert config.max_completion_length == max(config.rollout.max_new_tokens, config.data.max_demo_tokens) == 1024


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_step=3", "did you mean 'train.max_steps'"),
        ("trian.learning_rate=1e-5", "did you mean 'train.learning_rate'"),
        ("srft.entropy_granularity=tokens", "must be one of"),
        ("train.max_steps=many", "train.max_steps"),
        ("train.max_steps=0", "must be > 0"),
        ("loss.aggregation=mean", "loss.aggregation must be one of"),
        ("max_steps", "key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_unknown_key_in_recipe_names_the_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: srft\nsrft:\n  rl_coeff: 0.2\n")
    with pytest.raises(ConfigError, match=r"srft.rl_coeff.*r.yaml.*did you mean 'srft.rl_coef'"):
        load_config(recipe)


def test_duplicate_key_in_recipe_is_an_error(tmp_path):
    recipe = tmp_path / "dup.yaml"
    recipe.write_text("method: srft\ntrain:\n  max_steps: 3\nmethod: grpo\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: key 'method' appears twice \(line 4\)"):
        load_config(recipe)


def test_reward_weights_must_match_functions():
    with pytest.raises(ConfigError, match="reward.weights"):
        load_config(overrides=["reward.functions=[math,format]"])


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_recipe_is_valid(recipe):
    config = load_config(recipe)
    from hybridrft.objectives import build_objective

    build_objective(config)


def test_recipes_cover_every_method_on_gsm8k():
    from hybridrft.objectives import OBJECTIVES

    names = {r.name for r in RECIPES}
    assert "quickstart.yaml" in names
    for method in OBJECTIVES:
        assert f"{method}_gsm8k.yaml" in names
