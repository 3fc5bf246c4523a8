"""Configs: recipes, dotted overrides, and errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import config_value, flatten_tree
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
        ("train.max_steps=0", r"train.max_steps=0 is not allowed: it must be an integer >= 1"),
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




SHIPPED = RECIPES + sorted((RECIPES[0].parent / "paper").glob("*.yaml"))


@pytest.mark.parametrize("recipe", SHIPPED, ids=[r.relative_to(RECIPES[0].parent).as_posix() for r in SHIPPED])
def test_every_recipe_loads_as_shipped(recipe):
    """Each recipe loaded with no override at all: every value it sets reaches the config unchanged.

    tests/test_recipes.py checks each recipe's method against its file name and trains it one step,
    but under CPU overrides of its model, data, lengths, batch sizes and step counts, so those values
    are never validated there as shipped; here they are (a typo'd dtype, a zero batch size or a
    misspelt key in any of them fails)."""
    from hybridrft.objectives import build_objective

    tree = yaml.safe_load(recipe.read_text())
    config = load_config(recipe)
    assert config.method == tree["method"]
    mismatched = {key: (config_value(config, key), value) for key, value in flatten_tree(tree).items() if config_value(config, key) != value}
    assert not mismatched, f"{recipe.name}: config value vs recipe value: {mismatched}"
    assert build_objective(config).name == tree["method"]


def test_recipes_cover_every_method_on_gsm8k():
    from hybridrft.objectives import OBJECTIVES

    names = {r.name for r in RECIPES}
    assert "quickstart.yaml" in names
    for method in OBJECTIVES:
        assert f"{method}_gsm8k.yaml" in names


# --- the test suite's own setup: the real-data tests in CI -----------------------------------------


def test_missing_shared_data_fails_in_ci_and_skips_elsewhere(tmp_path, monkeypatch):
    """The ``shared_data`` fixture (conftest.py): without ../shared/data a CI run (``CI=true``, as
    GitHub sets it for ``.ci/run``) fails naming the expected path; a local run skips."""
    from conftest import require_shared_data

    missing = tmp_path / "shared" / "data"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"shared data not found at {re.escape(str(missing))}"):
        require_shared_data(missing)
    for value in ("", "0", "false"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.skip.Exception, match=f"shared data not found at {re.escape(str(missing))}"):
            require_shared_data(missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_shared_data(missing)
    missing.mkdir(parents=True)  # present: the path itself, in CI or not
    assert require_shared_data(missing) == missing
    monkeypatch.setenv("CI", "true")
    assert require_shared_data(missing) == missing


# ---------------------------------------------------------------- every numeric setting has a range

def _numeric_fields():
    from hybridrft.config import config_class
    from hybridrft.config.ranges import numeric_fields

    return list(numeric_fields(config_class()))


def _out_of_range(f, number) -> list:
    """Values the field's declared range must refuse: beyond each bound, a non-member of a choice,
    and (for floats) nan and infinity."""
    from hybridrft.config.ranges import RANGE

    allowed = f.metadata[RANGE]
    values = []
    if allowed.choices is not None:
        values.append(max(allowed.choices) + 1)
    if allowed.low is not None:
        values.append(allowed.low if allowed.low_open else allowed.low - (1 if number is int else 1e-3))
    if allowed.high is not None:
        values.append(allowed.high if allowed.high_open else allowed.high + (1 if number is int else 1e-3))
    if number is float:
        values += [float("nan"), float("inf")]
    return [number(v) if number is int else v for v in values]


def _yaml(value) -> str:
    if isinstance(value, float) and value != value:
        return ".nan"
    if value == float("inf"):
        return ".inf"
    return repr(value)


def test_every_numeric_field_declares_its_range():
    from hybridrft.config.ranges import RANGE

    fields = _numeric_fields()
    assert len(fields) > 70  # the shared sections and every method's own
    undeclared = [key for key, f, *_ in fields if RANGE not in f.metadata]
    assert not undeclared, f"numeric settings without a declared range: {undeclared}"


@pytest.mark.parametrize("key", [key for key, *_ in _numeric_fields()])
def test_every_numeric_field_refuses_a_value_outside_its_range(key):
    (f, number, optional, is_list), = [rest for k, *rest in _numeric_fields() if k == key]
    values = _out_of_range(f, number)
    assert values, f"{key}: its range refuses nothing"
    for value in values:
        text = f"[{_yaml(value)}]" if is_list else _yaml(value)
        with pytest.raises(ConfigError) as error:
            load_config(overrides=[f"{key}={text}"])
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"{key}=") and "is not allowed: it must be" in message, message
        assert str(value) in message, f"{message!r} does not name the value {value!r}"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("rollout.generation_batch_size=0", "rollout.generation_batch_size=0 is not allowed: it must be an integer >= 1"),
        ("train.learning_rate=.inf", "train.learning_rate=inf is not allowed: it must be a finite number > 0"),
        ("rollout.temperature=-1", "rollout.temperature=-1.0 is not allowed: it must be a finite number >= 0"),
        ("rollout.top_p=0", r"rollout.top_p=0.0 is not allowed: it must be a finite number in \(0, 1\]"),
        ("rollout.top_p=1.5", r"rollout.top_p=1.5 is not allowed: it must be a finite number in \(0, 1\]"),
        ("train.save_every=-1", "train.save_every=-1 is not allowed: it must be an integer >= 0"),
        ("eval.every=-1", "eval.every=-1 is not allowed: it must be an integer >= 0"),
        ("train.num_threads=0", r"train.num_threads=0 is not allowed: it must be an integer >= 1 \(or null\)"),
        ("train.micro_batch_size=0", "train.micro_batch_size=0 is not allowed"),
        ("train.seed=-1", r"train.seed=-1 is not allowed: it must be an integer in \[0, 4294967295\]"),
        ("reward.weights=[.nan]", r"reward.weights=\[nan\] \(the entry nan\) is not allowed"),
        ("srft.sft_entropy_sign=0", "srft.sft_entropy_sign=0 is not allowed: it must be one of -1, 1"),
    ],
)
def test_the_settings_that_used_to_get_through_are_refused_in_one_line(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_boundary_values_with_a_meaning_are_accepted():
    config = load_config(overrides=["rollout.temperature=0", "rollout.top_p=1", "train.save_every=0", "eval.every=0",
                                    "train.max_grad_norm=null", "grpo.dual_clip=null", "train.keep_checkpoints=0"])
    assert config.rollout.temperature == 0 and config.train.max_grad_norm is None


def test_validate_config_checks_a_config_made_in_python():
    from hybridrft.config import Config, validate_config

    config = Config()
    validate_config(config)  # the defaults are in range
    config.train.learning_rate = float("nan")
    with pytest.raises(ConfigError, match=r"^train.learning_rate=nan is not allowed: it must be a finite number > 0$"):
        validate_config(config)
    config = Config()
    config.train.max_steps = None  # None only where the field is Optional
    with pytest.raises(ConfigError, match=r"^train.max_steps=null is not allowed: it must be an integer >= 1$"):
        validate_config(config)
    config = Config()
    config.rollout.generation_batch_size = True  # bool is not a number
    with pytest.raises(ConfigError, match="rollout.generation_batch_size=True"):
        validate_config(config)


def test_a_config_built_in_python_is_validated_too(tiny_model_dir, tmp_path):
    from hybridrft.config import validate_config
    from hybridrft.train import Trainer

    config = load_config()
    config.train.learning_rate = float("nan")
    with pytest.raises(ConfigError, match="train.learning_rate=nan is not allowed"):
        validate_config(config)
    config.train.output_dir = str(tmp_path / "run")
    with pytest.raises(ConfigError, match="train.learning_rate=nan"):
        Trainer(config)
    assert not (tmp_path / "run").exists()  # refused before anything was touched
