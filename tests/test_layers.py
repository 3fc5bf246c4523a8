"""The layers of DESIGN.md hold: no module imports a layer above its own."""

from __future__ import annotations

import ast
import inspect
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


# the paper each method comes from, by arXiv id, which its file's docstring cites
PAPERS = {
    "grpo": "2402.03300",  # DeepSeekMath (Shao et al. 2024)
    "srft": "2506.19767",  # SRFT (Fu et al. 2025)
    "sasr": "2505.13026",  # SASR (Chen et al. 2025)
    "luffy": "2504.14945",  # LUFFY (Yan et al. 2025)
    "chord": "2508.11408",  # CHORD (Zhang et al. 2025)
    "hpt": "2509.04419",  # HPT (Lv et al. 2025)
    "relift": "2506.07527",  # ReLIFT (Ma et al. 2025)
    "prefix_rft": "2507.01679",  # Prefix-RFT (Huang et al. 2025)
    "distill": "2306.13649",  # GKD (Agarwal et al. 2023)
}
# the baselines that come from no paper of their own, by what the first line of their docstring says they are
BASELINES = {
    "sft": "Supervised fine-tuning on demonstrations",
    "two_stage": "SFT then GRPO",
    "static_mix": "GRPO plus a fixed-weight SFT loss",
}


def registered_classes(path: Path) -> dict[str, str | None]:
    """The classes of a file decorated with ``@register_objective``, each with its ``name = "..."``."""
    found = {}
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.ClassDef):
            continue
        decorators = {d.id if isinstance(d, ast.Name) else getattr(d, "attr", None) for d in node.decorator_list}
        if "register_objective" not in decorators:
            continue
        names = [
            stmt.value.value
            for stmt in node.body
            if isinstance(stmt, ast.Assign) and [getattr(t, "id", None) for t in stmt.targets] == ["name"]
            and isinstance(stmt.value, ast.Constant)
        ]
        found[node.name] = names[0] if names else None
    return found


def test_one_method_per_objective_file():
    """Each registered method is the one registered class of objectives/<name>.py, and the file says
    what the method is: the arXiv id of its paper, or (a baseline) a first line describing it."""
    from hybridrft.objectives import OBJECTIVES

    folder = PACKAGE / "objectives"
    assert set(OBJECTIVES) == set(PAPERS) | set(BASELINES), "a new method: add its paper (arXiv id) or it to BASELINES"
    for name, cls in OBJECTIVES.items():
        path = folder / f"{name}.py"
        assert path.is_file(), f"{name}: no file objectives/{name}.py"
        assert Path(inspect.getfile(cls)).resolve() == path.resolve(), f"{name} is defined in {inspect.getfile(cls)}"
        assert cls.__module__ == f"hybridrft.objectives.{name}" and cls.name == name
        assert registered_classes(path) == {cls.__name__: name}, f"{path.name} registers {registered_classes(path)}"
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        assert docstring, f"{path.name} has no module docstring"
        if name in PAPERS:
            assert f"arXiv {PAPERS[name]}" in docstring, f"{path.name} does not cite arXiv {PAPERS[name]}"
        else:
            first_line = docstring.splitlines()[0]
            assert BASELINES[name] in first_line, f"{path.name}: first docstring line {first_line!r}"
    # and no other file of objectives/ registers a method (base.py and composite.py hold building blocks)
    registering = {p.stem for p in folder.glob("*.py") if registered_classes(p)}
    assert registering == set(OBJECTIVES)


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
