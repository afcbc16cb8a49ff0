"""The layer contract (DESIGN.md, "Layout"): tunesmith is a stack of layers that import
downward only, with no import cycle by any import, inside functions too.

Two independent checks, one list of layers (pyproject.toml, `[tool.importlinter]`):

- import-linter's own contracts, as `lint-imports` runs them;
- an AST walk over every import statement in src/tunesmith, module level and inside
  functions: no cycle between modules, no import of a higher layer (nor of a sibling in an
  `a | b` layer), every top-level module placed in a layer, and function-level imports of
  tunesmith's own modules only where they have a reason (the CLI's start-up time, or the
  allow-list below). grimp, under import-linter, does see function-level imports too (the
  planted-import test proves it on a scratch copy of the tree), so each check covers them.

The checkers are plain functions, tested on a small synthetic package and on a copy of the
real tree with a planted upward import, so a check that silently passes everything fails.
"""

from __future__ import annotations

import ast
import io
import os
import shutil
import subprocess
import sys
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml needs tomllib (3.11+) or tomli")

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PYPROJECT = REPO / "pyproject.toml"
PACKAGE = "tunesmith"

# Modules whose function-level imports of tunesmith are their design: each CLI command imports
# what it runs when it runs, so `tunesmith --help` stays fast. Each such import carries a
# comment on its line or within the two lines above it (why it is deferred).
LAZY_IMPORT_MODULES = ("tunesmith.cli",)

# Every other function-level import of a tunesmith module, with its reason. A function-level
# import is never the way out of an import cycle (DESIGN.md): move the code down a layer, or
# pass the callable in as an argument.
LAZY_IMPORTS_ALLOWED = {
    ("tunesmith.tune.study", "tunesmith.tune.ray_backend"):
        "Ray is a heavy optional extra (`tunesmith[ray]`); only `tunesmith tune --backend ray` imports it",
}


# --------------------------------------------------------------------------- the checkers


@dataclass(frozen=True)
class Import:
    importer: str  # module name
    imported: str  # the tunesmith module it resolves to
    path: Path
    line: int
    end_line: int
    in_function: bool

    def where(self) -> str:
        try:
            shown = self.path.relative_to(REPO)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}"


def read_layers(pyproject: Path = PYPROJECT) -> list[list[str]]:
    """The layers of the import-linter `layers` contract, highest first; each is a list of
    siblings (`a | b`: independent, neither may import the other)."""
    config = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]
    contracts = [c for c in config["contracts"] if c["type"] == "layers"]
    assert len(contracts) == 1, "expected one `layers` contract in pyproject.toml"
    return [[name.strip() for name in layer.split("|")] for layer in contracts[0]["layers"]]


def module_files(src: Path, package: str) -> dict[str, Path]:
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        name = ".".join(path.relative_to(src).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    return modules


class _ImportVisitor(ast.NodeVisitor):
    """Every import statement with the targets it names and whether it runs inside a function."""

    def __init__(self):
        self.found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []
        self.depth = 0

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_Import(self, node):
        self.found.append((node, self.depth > 0))

    visit_ImportFrom = visit_Import


def collect_imports(src: Path, package: str) -> tuple[dict[str, Path], list[Import]]:
    """Every import of one of the package's own modules, resolved to the module it loads
    (`from a.b import c` is a.b.c when c is a module, else a.b; relative imports included),
    as grimp resolves them."""
    modules = module_files(src, package)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found = []
    for module, path in modules.items():
        visitor = _ImportVisitor()
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        is_package = path.name == "__init__.py"
        for node, in_function in visitor.found:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = module.split(".") if is_package else module.split(".")[:-1]
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                # `from a import b` loads module a.b when there is one, else takes the name b from a
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            resolved = {resolve(t) for t in targets if t.split(".")[0] == package}
            for target in sorted(r for r in resolved if r and r != module):
                found.append(Import(module, target, path, node.lineno, node.end_lineno or node.lineno, in_function))
    return modules, found


def find_cycles(modules, imports: list[Import]) -> list[str]:
    """Strongly connected components of more than one module (Tarjan, iterative), each with
    the imports that close it."""
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        edges[imp.importer].add(imp.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(set(component))
    problems = []
    for component in components:
        inside = sorted(
            f"  {imp.importer} -> {imp.imported} ({imp.where()}{', in a function' if imp.in_function else ''})"
            for imp in imports
            if imp.importer in component and imp.imported in component
        )
        problems.append(f"cycle of {len(component)} modules: {', '.join(sorted(component))}\n" + "\n".join(inside))
    return problems


def layer_of(module: str, layers: list[list[str]]) -> tuple[int, str] | None:
    """(index of the module's layer, highest first; the sibling it belongs to), or None."""
    best = None
    for level, siblings in enumerate(layers):
        for sibling in siblings:
            if (module == sibling or module.startswith(sibling + ".")) and (best is None or len(sibling) > len(best[1])):
                best = (level, sibling)
    return best


def upward_imports(imports: list[Import], layers: list[list[str]]) -> list[str]:
    """Imports of a higher layer, or of a sibling in the same `a | b` layer."""
    problems = []
    for imp in imports:
        source, target = layer_of(imp.importer, layers), layer_of(imp.imported, layers)
        if source is None or target is None:
            continue
        where = f"{imp.where()}{', inside a function' if imp.in_function else ''}"
        if target[0] < source[0]:
            problems.append(f"{imp.importer} ({source[1]}) imports {imp.imported}, a higher layer ({target[1]}): {where}")
        elif target[0] == source[0] and target[1] != source[1]:
            problems.append(f"{imp.importer} imports {imp.imported}: {source[1]} and {target[1]} are independent "
                            f"siblings of one layer: {where}")
    return problems


def _comment_lines(path: Path) -> set[int]:
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return {tok.start[0] for tok in tokens if tok.type == tokenize.COMMENT}


def lazy_import_problems(imports: list[Import], lazy_modules=LAZY_IMPORT_MODULES,
                         allowed=LAZY_IMPORTS_ALLOWED) -> list[str]:
    """Function-level imports of the package's own modules outside `lazy_modules` and the
    allow-list; in `lazy_modules`, those without a comment on their lines or the two above;
    and allow-list entries that no longer match an import (stale reasons)."""
    problems, used, comments = [], set(), {}
    for imp in imports:
        if not imp.in_function:
            continue
        if imp.importer in lazy_modules or imp.importer.startswith(tuple(m + "." for m in lazy_modules)):
            if imp.path not in comments:
                comments[imp.path] = _comment_lines(imp.path)
            if not comments[imp.path] & set(range(imp.line - 2, imp.end_line + 1)):
                problems.append(f"{imp.where()}: function-level import of {imp.imported} in {imp.importer} without "
                                "a comment (on the line or the two above) saying why it is deferred")
        elif (imp.importer, imp.imported) in allowed:
            used.add((imp.importer, imp.imported))
        else:
            problems.append(f"{imp.where()}: {imp.importer} imports {imp.imported} inside a function; import it at "
                            "module level (a cycle means the code belongs in a lower layer), or add it to "
                            "LAZY_IMPORTS_ALLOWED in tests/test_architecture.py with the reason")
    problems += [f"LAZY_IMPORTS_ALLOWED lists {a} -> {b}, which is no longer imported inside a function: remove it"
                 for a, b in sorted(set(allowed) - used)]
    return problems


def top_level_outside_layers(modules, layers: list[list[str]], package: str) -> list[str]:
    top = {".".join(name.split(".")[:2]) for name in modules if name != package}
    return sorted(name for name in top if layer_of(name, layers) is None)


def run_import_linter(cwd: Path, src: Path = SRC) -> subprocess.CompletedProcess:
    """`lint-imports` as a user runs it (the contracts of `cwd`/pyproject.toml), in a fresh
    interpreter of this venv with `src` first on the path, so it analyses that tree."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])))
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--no-cache"],
                          check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------- the real tree


@pytest.fixture(scope="module")
def graph():
    return collect_imports(SRC, PACKAGE)


def _report(problems: list[str]) -> str:
    return f"{len(problems)} problem(s):\n" + "\n".join(problems)


def test_import_linter_contracts_are_kept():
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[test]')")
    result = run_import_linter(REPO)
    assert result.returncode == 0, f"import-linter: a contract in pyproject.toml is broken\n{result.stdout}{result.stderr}"
    assert "KEPT" in result.stdout, result.stdout


def test_no_import_cycle_by_any_import(graph):
    modules, imports = graph
    assert len(modules) > 40 and imports, "found no modules or imports: is SRC right?"
    assert not (problems := find_cycles(modules, imports)), _report(problems)


def test_every_import_points_down_the_layers(graph):
    _, imports = graph
    assert not (problems := upward_imports(imports, read_layers())), _report(problems)


def test_every_top_level_module_is_in_a_layer(graph):
    """A new top-level module or package (e.g. domains/) gets its place in the contract, or
    neither check would constrain it."""
    modules, _ = graph
    assert not (outside := top_level_outside_layers(modules, read_layers(), PACKAGE)), (
        f"not in any layer of pyproject.toml's [tool.importlinter] contract: {outside}")


def _in_cli(imp: Import) -> bool:
    return imp.importer in LAZY_IMPORT_MODULES or imp.importer.startswith(tuple(m + "." for m in LAZY_IMPORT_MODULES))


def test_function_level_imports_only_where_allowed(graph):
    """Outside the CLI: only the allow-listed ones, and the allow-list has no stale entry."""
    _, imports = graph
    problems = lazy_import_problems([imp for imp in imports if not _in_cli(imp)])
    assert not problems, _report(problems)


def test_cli_function_level_imports_say_why(graph):
    """In the CLI each deferred import of tunesmith has a comment on its line or the two above."""
    _, imports = graph
    problems = lazy_import_problems([imp for imp in imports if _in_cli(imp)], allowed={})
    assert not problems, _report(problems)


def test_layers_match_the_design():
    """The contract's order is DESIGN.md's direction (core -> data -> ... -> serve -> cli)."""
    names = [name for layer in read_layers() for name in layer]
    order = ["tunesmith.cli", "tunesmith.serve", "tunesmith.jobs", "tunesmith.workflows", "tunesmith.tune",
             "tunesmith.train", "tunesmith.export", "tunesmith.inference", "tunesmith.data", "tunesmith.config"]
    positions = [names.index(name) for name in order]
    assert positions == sorted(positions), names
    assert layer_of("tunesmith.train.rl", read_layers())[0] == layer_of("tunesmith.evaluate.metrics", read_layers())[0]


# --------------------------------------------------------------------------- the checkers fail


def _write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_checkers_catch_cycles_upward_and_unexplained_lazy_imports(tmp_path):
    _write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/low.py": """
            def helper():
                from pkg.high import value  # planted: upward, inside a function
                return value
        """,
        "pkg/high.py": """
            from . import low
            value = 1
        """,
        "pkg/mid_a.py": "from pkg import mid_b\n",
        "pkg/mid_b.py": "X = 1\n",
        "pkg/cli/__init__.py": "",
        "pkg/cli/commands.py": """
            def documented():
                # deferred: start-up time
                from pkg.high import value
                return value

            def undocumented():
                from pkg import low
                return low
        """,
    })
    layers = [["pkg.cli"], ["pkg.high"], ["pkg.mid_a", "pkg.mid_b"], ["pkg.low"]]
    modules, imports = collect_imports(tmp_path, "pkg")
    edges = {(i.importer, i.imported, i.in_function) for i in imports}
    assert ("pkg.low", "pkg.high", True) in edges
    assert ("pkg.high", "pkg.low", False) in edges  # relative import resolved

    cycles = find_cycles(modules, imports)
    assert len(cycles) == 1 and "pkg.high, pkg.low" in cycles[0] and "in a function" in cycles[0]

    upward = upward_imports(imports, layers)
    assert any("pkg.low (pkg.low) imports pkg.high, a higher layer" in p and "inside a function" in p for p in upward)
    assert any("pkg.mid_a imports pkg.mid_b" in p and "independent" in p for p in upward)
    assert len(upward) == 2, upward

    lazy = lazy_import_problems(imports, lazy_modules=("pkg.cli",),
                                allowed={("pkg.low", "pkg.high"): "test", ("pkg.gone", "pkg.high"): "stale"})
    assert len(lazy) == 2, lazy
    assert "commands.py:8" in lazy[0] and "without a comment" in lazy[0]  # `documented` passes
    assert "pkg.gone -> pkg.high" in lazy[1]
    not_allowed = lazy_import_problems(imports, lazy_modules=("pkg.cli",), allowed={})
    assert any("pkg.low imports pkg.high inside a function" in p for p in not_allowed)

    assert top_level_outside_layers(modules, layers, "pkg") == []
    assert top_level_outside_layers(modules, layers[1:], "pkg") == ["pkg.cli"]


def test_a_planted_upward_function_level_import_breaks_both_checks(tmp_path):
    """On a scratch copy of the real tree: the data layer importing the server inside a
    function. import-linter (grimp) must see it, and so must the AST checks."""
    pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[test]')")
    copy = tmp_path / "src"
    shutil.copytree(SRC / PACKAGE, copy / PACKAGE, ignore=shutil.ignore_patterns("__pycache__", "samples"))
    planted = copy / PACKAGE / "data" / "answers.py"
    planted.write_text(planted.read_text() + "\n\ndef _planted():\n    from tunesmith.serve import app\n\n    return app\n")

    _, imports = collect_imports(copy, PACKAGE)
    assert any("tunesmith.data.answers (tunesmith.data) imports tunesmith.serve.app, a higher layer" in p
               for p in upward_imports(imports, read_layers()))
    assert any("tunesmith.data.answers imports tunesmith.serve.app inside a function" in p
               for p in lazy_import_problems(imports))

    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    result = run_import_linter(tmp_path, src=copy)
    assert result.returncode != 0, f"import-linter missed a function-level upward import:\n{result.stdout}{result.stderr}"
    assert "BROKEN" in result.stdout and "tunesmith.data.answers -> tunesmith.serve" in result.stdout, result.stdout
