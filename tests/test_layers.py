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
