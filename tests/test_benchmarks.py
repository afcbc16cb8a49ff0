"""Every benchmark script keeps importing: their figures are quoted in the README and
BENCHMARKS.md, so a script that no longer loads is a broken claim. The scripts import
tunesmith inside their functions (so `--help` is quick); each of those names must exist too."""

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_benchmark_script_imports(script):
    spec = importlib.util.spec_from_file_location(f"benchmark_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # each runs its measurement only under `__main__`
    assert callable(getattr(module, "main", None)), f"{script.name} has no main()"
    missing = []
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tunesmith"):
            target = importlib.import_module(node.module)
            missing += [f"{node.module}.{a.name}" for a in node.names
                        if not hasattr(target, a.name) and not (hasattr(target, "__path__")
                        and importlib.util.find_spec(f"{node.module}.{a.name}"))]
    assert not missing, f"{script.name} imports names that no longer exist: {missing}"
