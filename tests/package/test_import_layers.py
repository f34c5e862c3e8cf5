"""petloc's imports go down the flow only: data -> model -> config -> training -> tracking ->
search -> the command line. An import that goes up is a cycle waiting to happen."""

import ast
from pathlib import Path

import petloc

PACKAGE = Path(petloc.__file__).parent

# Module name prefix -> layer; a module may import its own layer and the ones below.
LAYERS = [
    ("petloc.errors", 0),
    ("petloc.files", 0),
    ("petloc.report", 0),
    ("petloc.quantities", 0),  # what petloc measures, by name, and how tables show it
    ("petloc.quiet", 0),
    ("petloc.processes", 0),
    ("petloc.stopping", 0),
    ("petloc.cpu", 0),
    ("petloc.registry_names", 0),
    ("petloc.library_internals", 0),
    ("petloc.data", 1),
    ("petloc.hyperparams", 1),  # plain data below the model, so config reads it without Keras
    ("petloc.plugins", 1),  # users' backbones: the model looks them up, config imports them
    ("petloc.model", 2),
    ("petloc.config", 3),
    ("petloc.training", 4),
    ("petloc.tracking", 5),
    ("petloc.serving", 5),
    ("petloc.search", 6),
    ("petloc.api", 7),  # the Python API: what the command line does, as functions
    ("petloc.cli", 7),
    ("petloc.__main__", 7),
    ("petloc", 7),  # the package itself: the public API
]


def layer(module: str) -> int:
    return next(
        rank for prefix, rank in LAYERS if module == prefix or module.startswith(prefix + ".")
    )


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every petloc import that runs, at module level or in a function;
    `if TYPE_CHECKING:` blocks are for annotations only and never run."""
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from petloc import x` may name a module or an object of the package.
            names = (
                [f"{node.module}.{alias.name}" for alias in node.names]
                if node.module == "petloc"
                else [node.module]
            )
            found += [(node.lineno, name) for name in names]
    return [(line, name) for line, name in found if name == "petloc" or name.startswith("petloc.")]


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for line, imported in runtime_imports(ast.parse(path.read_text())):
            if (
                imported.startswith("petloc.")
                and importer != "petloc"
                and layer(imported) > layer(importer)
            ):
                problems.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line}: {importer} (layer {layer(importer)}) "
                    f"imports {imported} (layer {layer(imported)})"
                )
    return problems


def test_imports_only_go_down_the_flow():
    assert upward_imports() == []


def test_the_check_catches_an_import_that_goes_up(tmp_path):
    tree = ast.parse("def f():\n    from petloc.tracking import registry\n")
    [(_, imported)] = runtime_imports(tree)
    # what the check reports for model -> tracking
    assert layer(imported) > layer("petloc.model.backbones")
    guarded = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from petloc.search import sweep\n"
    )
    assert runtime_imports(guarded) == []


def test_model_and_data_code_never_import_mlflow():
    for path in [
        *(PACKAGE / "model").rglob("*.py"),
        *(PACKAGE / "data").rglob("*.py"),
        *(PACKAGE / "training").rglob("*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n == "mlflow" or n.startswith("mlflow.") for n in names), path


def mlflow_imports(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import of MLflow, wherever it is in the module."""
    found = []
    for node in ast.walk(tree):
        names = (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
        found += [(node.lineno, n) for n in names if n == "mlflow" or n.startswith("mlflow.")]
    return found


def test_the_search_never_imports_mlflow():
    """petloc.tracking owns MLflow; the search records its runs through tracking.sweep_record."""
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {name}"
        for path in sorted((PACKAGE / "search").rglob("*.py"))
        for line, name in mlflow_imports(ast.parse(path.read_text()))
    ]
    assert found == []


def test_the_mlflow_check_catches_every_form_of_import():
    tree = ast.parse(
        "import mlflow\nfrom mlflow.tracking import MlflowClient\n"
        "def f():\n    from mlflow.exceptions import MlflowException\n"
        "import mlflowish\n"
    )
    assert [name for _, name in mlflow_imports(tree)] == [
        "mlflow",
        "mlflow.tracking",
        "mlflow.exceptions",
    ]
