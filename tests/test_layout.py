"""The package layout: one home per concept, and imports that flow one way.

The rules are the data just below. Every `.py` file under `gradmix_tf/` is
parsed with `ast`; its imports (module level and inside functions, `import x`
and `from x import y`, relative ones resolved, and "module:function" registry
strings such as the task table's) are checked against them. A new subpackage
or top-level module must be placed in `STAGES` before it can be imported.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import re

PACKAGE = "gradmix_tf"
PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1] / PACKAGE

STAGES = (
    "errors",  # gradmix_tf/errors.py: the user errors; imports no gradmix_tf module
    "distribute",  # gradmix_tf/distribute.py: imports only errors
    "data",  # the multi-stream data contract (images and clips), clip decoding
    "datasets",  # TFDS builders, loading (name + split -> streams), preparation, manual files
    "tasks",  # the named tasks, one registry (`load_task`)
    "networks",  # the trunks, one registry (`build_trunk`)
    "mixing",  # the maths of mixing: pure tensor functions
    "rules",  # the mixing rules as objects (GradMix and the baselines), on the maths of `mixing`
    "training",  # GradMixModel and its train step
    "callbacks",  # checkpoints, mixing summaries, pseudo-labels
    "export",  # SavedModel export and prediction
    "config_renames",  # top-level module: old config names read in today's
    "config_checks",  # top-level module: the checks of a config's values
    "workdir",  # top-level module: what a work directory holds, compared with a config
    "experiment",  # top-level module: one experiment from a config
    "benchmark",  # top-level module: many experiments
    "source_study",  # top-level module: source usefulness against mixing weights
    "audit",  # top-level module: which sources help, from the labelled target alone
)
"""Subpackages and top-level modules of gradmix_tf, in the order the data flows.

Rule 1: a module imports only from its own subpackage or an earlier stage (so
there is no cycle between subpackages either). Rule 2: no module imports a
private name (`_name`) from another module, nor reads one off an imported
module (`loading._name`): a helper another module needs gets a public name.
Rule 3: every subpackage and top-level module of gradmix_tf is in `STAGES`.
The root `gradmix_tf/__init__.py` imports no gradmix_tf module.
"""

REGISTRY_STRING = re.compile(rf"{PACKAGE}(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?")
"""A string constant naming a module ("module" or "module:function") counts as an import."""


@dataclasses.dataclass(frozen=True)
class Import:
    """One import of a gradmix_tf module, as written in `path` at `line`."""

    path: str
    line: int
    text: str
    target: str  # the gradmix_tf module imported from
    names: tuple[str, ...] = ()  # the names of `from target import names`

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: `{self.text}`"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage_of(module: str) -> str | None:
    """The stage of a gradmix_tf module: its subpackage or top-level module (None: the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def is_module(module: str) -> bool:
    path = PACKAGE_DIR.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module of `from ... import`, relative imports resolved."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def parse(path: pathlib.Path, source: str | None = None) -> tuple[list[Import], list[str]]:
    """The gradmix_tf imports of a file and its uses of other modules' private names."""
    source = path.read_text() if source is None else source
    tree = ast.parse(source, filename=str(path))
    module, is_package = module_name(path), path.name == "__init__.py"
    relative = str(path.relative_to(PACKAGE_DIR.parent))
    imports, private_uses, bound_modules = [], [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    imports.append(Import(relative, node.lineno, ast.unparse(node), alias.name))
                    if alias.asname:
                        bound_modules[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source_module = resolve(module, is_package, node)
            if source_module.split(".")[0] != PACKAGE:
                continue
            names = tuple(alias.name for alias in node.names)
            for alias in node.names:
                submodule = f"{source_module}.{alias.name}"
                target = submodule if is_module(submodule) else source_module
                imports.append(Import(relative, node.lineno, ast.unparse(node), target, names))
                if is_module(submodule):
                    bound_modules[alias.asname or alias.name] = submodule
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if REGISTRY_STRING.fullmatch(node.value):
                target = node.value.split(":")[0]
                imports.append(Import(relative, node.lineno, repr(node.value), target))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in bound_modules
            and bound_modules[node.value.id] != module
            and is_private(node.attr)
        ):
            private_uses.append(f"{relative}:{node.lineno}: `{ast.unparse(node)}`")
    return imports, private_uses


def package_files() -> list[pathlib.Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def layering_violations(path: pathlib.Path, source: str | None = None) -> list[str]:
    """Rule 1 for one file: imports of a later stage (or, from the root, of any stage)."""
    importer = stage_of(module_name(path))
    imports, _ = parse(path, source)
    violations = []
    for imported in imports:
        stage = stage_of(imported.target)
        if stage is None or stage == importer:
            continue
        if importer is None:
            violations.append(f"{imported}: the root gradmix_tf/__init__.py imports no module")
        elif stage not in STAGES or importer not in STAGES:
            continue  # rule 3 reports the unplaced one
        elif STAGES.index(stage) > STAGES.index(importer):
            violations.append(
                f"{imported}: stage '{importer}' imports the later stage '{stage}' "
                f"(order: {' -> '.join(STAGES)})"
            )
    return violations


def private_name_violations(path: pathlib.Path, source: str | None = None) -> list[str]:
    """Rule 2 for one file: private names taken from another module."""
    importer = module_name(path)
    imports, private_uses = parse(path, source)
    violations = [
        f"{imported}: imports the private name '{name}' of {imported.target}"
        for imported in imports
        if imported.target != importer
        for name in imported.names
        if is_private(name)
    ]
    return violations + [f"{use}: reads a private name of another module" for use in private_uses]


def test_every_subpackage_and_top_level_module_has_a_stage():
    children = {
        p.stem
        for p in PACKAGE_DIR.iterdir()
        if (p.suffix == ".py" and p.name != "__init__.py")
        or (p.is_dir() and p.name != "__pycache__" and any(p.rglob("*.py")))
    }
    unplaced = [f"gradmix_tf/{name}" for name in sorted(children - set(STAGES))]
    assert not unplaced, (
        f"{', '.join(unplaced)}: not in STAGES of tests/test_layout.py; place each in the "
        f"data flow: {' -> '.join(STAGES)}"
    )


def test_imports_come_from_the_same_or_an_earlier_stage():
    violations = [v for path in package_files() for v in layering_violations(path)]
    assert not violations, "\n".join(violations)


def test_no_import_cycle_between_subpackages():
    edges: dict[str, dict[str, Import]] = {}
    for path in package_files():
        importer = stage_of(module_name(path))
        for imported in parse(path)[0]:
            stage = stage_of(imported.target)
            if importer and stage and stage != importer:
                edges.setdefault(importer, {}).setdefault(stage, imported)

    def cycle_from(start: str, node: str, trail: list[str]) -> list[str] | None:
        for successor in edges.get(node, {}):
            if successor == start:
                return trail + [successor]
            if successor not in trail:
                found = cycle_from(start, successor, trail + [successor])
                if found:
                    return found
        return None

    for start in sorted(edges):
        cycle = cycle_from(start, start, [start])
        if cycle:
            steps = [str(edges[a][b]) for a, b in zip(cycle, cycle[1:])]
            raise AssertionError(f"import cycle {' -> '.join(cycle)}:\n" + "\n".join(steps))


def test_no_private_name_is_taken_from_another_module():
    violations = [v for path in package_files() for v in private_name_violations(path)]
    assert not violations, "\n".join(violations)


def test_the_rules_catch_a_later_stage_import_and_a_private_name():
    streams = PACKAGE_DIR / "data" / "streams.py"
    source = streams.read_text() + "\n\ndef f():\n    from ..training import gradmix_model\n"
    (violation,) = layering_violations(streams, source)
    assert "gradmix_tf/data/streams.py" in violation and "'training'" in violation
    digits = PACKAGE_DIR / "tasks" / "digits.py"
    source = "from gradmix_tf.datasets.loading import _helper\nfrom . import raw\nraw._cache\n"
    violations = private_name_violations(digits, source)
    assert [v.split(": ", 1)[0] for v in violations] == [
        "gradmix_tf/tasks/digits.py:1",
        "gradmix_tf/tasks/digits.py:3",
    ]
