"""YAML recipes plus dotted command-line overrides, validated against the typed schema.

OmegaConf does the merging and type conversion (``"20"`` becomes ``20`` for an ``int`` field); we
check every key first so that a typo is reported with the closest valid key instead of a stack trace.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hybridrft.config.ranges import ConfigError, validate_config
from hybridrft.config.schema import METHOD_DEFAULTS, Config, config_class


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error: plain YAML
    keeps the last value silently, which hides a pasted-over setting in a recipe."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key '{key}' appears twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


@functools.lru_cache(maxsize=None)
def _valid_keys(cls: type, prefix: str = "") -> dict[str, bool]:
    """Every dotted key of a dataclass tree -> whether it is a free-form mapping (any subkey allowed)."""
    keys: dict[str, bool] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            keys[key] = False
            keys.update(_valid_keys(hint, key + "."))
        else:
            keys[key] = typing.get_origin(hint) in (dict, typing.Dict)
    return keys


def check_key(key: str, where: str) -> None:
    """Raise ``ConfigError`` naming the closest valid key when ``key`` is not in the schema."""
    keys = _valid_keys(config_class())
    if key in keys:
        return
    parent = key.rsplit(".", 1)[0] if "." in key else None
    if parent is not None and keys.get(parent):  # a subkey of a free-form mapping (data.fields.x)
        return
    # a free-form mapping can sit higher up too (data.fields.prompt.x is still invalid, but rare)
    close = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown config key '{key}' in {where}{hint}")


def _flatten(tree: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    keys = _valid_keys(config_class())
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and not keys.get(key, False) and key in keys:
            yield from _flatten(value, key + ".")
        else:
            yield key, value


def _unflatten(dotted: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.max_steps=20"`` -> ``("train.max_steps", 20)``; values are read as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. train.max_steps=20)")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def load_config(
    recipe: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    base: dict[str, Any] | None = None,
) -> Config:
    """Build a validated ``Config`` from defaults, an optional base mapping, a recipe, and overrides."""
    layers: list[tuple[str, dict[str, Any]]] = []
    if base:
        layers.append(("built-in defaults", base))
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        try:
            tree = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: a recipe must be a YAML mapping, got {type(tree).__name__}")
        layers.append((str(path), tree))
    dotted: dict[str, Any] = {}
    for text in overrides:
        key, value = parse_override(text)
        dotted[key] = value
    # the run's method brings its reference defaults for shared keys, below every recipe and override
    schema = config_class()
    method = dotted.get("method")
    for _, tree in reversed(layers):
        if method is None:
            method = tree.get("method")
    method = method or Config.method
    if METHOD_DEFAULTS.get(method):
        layers.insert(0, (f"{method}'s defaults", _unflatten(METHOD_DEFAULTS[method])))
    merged = OmegaConf.structured(schema)
    where = "defaults"
    try:
        for where, tree in layers:
            for key, _ in _flatten(tree):
                check_key(key, where)
            merged = OmegaConf.merge(merged, tree)
        where = "command-line overrides"
        for key, value in dotted.items():
            check_key(key, where)
            OmegaConf.update(merged, key, value, merge=True)
        config = OmegaConf.to_object(merged)
        validate_config(config)
        return config
    except OmegaConfBaseException as err:  # type errors; the message names the key
        first_line = str(err).splitlines()[0]
        key = getattr(err, "full_key", None)
        raise ConfigError(f"invalid value for '{key}' in {where}: {first_line}") from None
    except ConfigError:
        raise
    except ValueError as err:  # raised by a section's __post_init__ check
        raise ConfigError(str(err)) from None


def config_to_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
