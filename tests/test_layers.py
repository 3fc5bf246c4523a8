"""The layers of DESIGN.md hold: no module imports a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "hybridrft"

# rank of each layer; a module may import only its own layer and layers of lower rank
RANK = {
    "config": 0,
    "models": 1,
    "data": 1,
    "ops": 2,  # the log-prob forward drives a model (models.kv_cache); DESIGN puts ops above models
    "rewards": 2,
    "rollout": 3,
    "objectives": 4,
    "eval": 5,
    "report": 5,
    "train": 6,
    "cli": 7,
}


def imported_layers(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n.split(".")[1] for n in names if n.startswith("hybridrft.") and len(n.split(".")) > 1}


def test_every_layer_is_known():
    layers = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert layers == set(RANK)


def test_no_lower_layer_imports_a_higher_one():
    violations = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2:
            continue
        layer = parts[0]
        for imported in imported_layers(path):
            if RANK[imported] > RANK[layer] or (RANK[imported] == RANK[layer] and imported != layer):
                violations.append(f"{path.relative_to(PACKAGE)} imports hybridrft.{imported}")
    assert not violations, "\n".join(violations)


def test_one_method_per_objective_file():
    from hybridrft.objectives import OBJECTIVES

    for name, cls in OBJECTIVES.items():
        assert cls.__module__ == f"hybridrft.objectives.{name}"
        assert cls.__module__ and (cls.__doc__ or __import__(cls.__module__, fromlist=["_"]).__doc__)


def test_no_layer_but_objectives_imports_a_method_file():
    """The trainer, the CLI, the config and the reports know objectives only through the registry."""
    from hybridrft.objectives import OBJECTIVES

    method_modules = {f"hybridrft.objectives.{name}" for name in OBJECTIVES} | {"hybridrft.objectives.composite"}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if len(parts) < 2 or parts[0] == "objectives":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in method_modules:
                offenders.append(f"{path.relative_to(PACKAGE)} imports {node.module}")
    assert not offenders, "\n".join(offenders)


def test_no_shared_layer_names_a_method_section():
    """config/, report/, train/logging.py and cli/ hold no method's settings or metric names."""
    from hybridrft.objectives import OBJECTIVES

    names = sorted(OBJECTIVES)
    places = [*(PACKAGE / "config").glob("*.py"), *(PACKAGE / "report").glob("*.py"), PACKAGE / "train" / "logging.py",
              *(PACKAGE / "cli").glob("*.py")]
    offenders = []
    for path in places:
        text = path.read_text()
        for name in names:
            for pattern in (f"config.{name}.", f'"{name}/', f"'{name}/", f'"{name}":', f"== \"{name}\""):
                if pattern in text:
                    offenders.append(f"{path.relative_to(PACKAGE)}: {pattern}")
    assert not offenders, "\n".join(offenders)
