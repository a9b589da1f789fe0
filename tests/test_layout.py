"""The package's shape: sub-packages in layers that no import runs back up, no import cycles between
d3codec's modules (imports inside functions count), no import of a 0.1 path (d3codec._compat), and no
function over MAX_LINES lines or MAX_PARAMETERS parameters, and no module over MAX_MODULE_LINES lines (issue 36's
bar)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES, MAX_PARAMETERS, MAX_MODULE_LINES = 60, 12, 500

# the layers, lowest first: a module may import its own layer's modules and lower ones, never a higher one
# (README.md, Layout). A module's layer is its longest listed prefix; the top-level d3codec (the public API)
# sits above them all.
LAYERS = [
    ("d3codec.errors", "d3codec.version", "d3codec.registry", "d3codec._compat"),  # leaves
    ("d3codec.util",),  # progress, the allocator
    ("d3codec.format",),  # the container, archive metadata, stored tensors, decode limits, noise
    ("d3codec.data",),  # real datasets
    ("d3codec.nn",),  # networks, augmentation, losses, teachers, the expert pool, BPTT's schedule
    ("d3codec.decode",),  # archive → images: the dataset, samplers, expand, verify
    ("d3codec.encode",),  # the compress pipeline, checkpoints, seeds, subtasks, the default rule
    ("d3codec.methods",),  # one package per method family
    ("d3codec.evaluation",),  # students, baselines, DD-Ranking's metrics
    ("d3codec.cli",),  # the d3 command
]


def layer(module: str) -> int | None:
    """The index in LAYERS of ``module``'s layer; len(LAYERS) for the package itself, None for none."""
    if module == "d3codec":
        return len(LAYERS)
    best, found = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    return found


def modules() -> dict[str, Path]:
    """Module name → file, for every module of d3codec/."""
    out = {}
    for path in (ROOT / "d3codec").rglob("*.py"):
        parts = ["d3codec"] + list(path.relative_to(ROOT / "d3codec").with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module → the d3codec modules it imports anywhere in its file. ``from pkg import sub`` counts as an
    import of ``pkg.sub`` alone; a parent package's own import, which every submodule makes, does not count."""
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        typing_only = {
            id(n) for block in ast.walk(tree) if _type_checking(block) for stmt in block.body for n in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:  # annotations only: no import at run time, no layering
                continue
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                targets = subs or [target]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in mods and t != name}
    return graph


def _type_checking(node: ast.AST) -> bool:
    """Whether ``node`` is an ``if TYPE_CHECKING:`` block (imports for annotations alone)."""
    return isinstance(node, ast.If) and (
        getattr(node.test, "id", None) == "TYPE_CHECKING" or getattr(node.test, "attr", None) == "TYPE_CHECKING"
    )


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_itself_through_others():
    graph = import_graph(modules())
    assert graph["d3codec.encode.pipeline"] >= {
        "d3codec.encode.federated",
        "d3codec.format.meta",
    }  # the graph sees real imports
    assert cycles(graph) == []


def test_no_import_runs_up_a_layer():
    graph = import_graph(modules())
    assert layer("d3codec.format.container") == 2 and layer("d3codec.util") == 1
    assert [name for name in graph if layer(name) is None] == []  # every module has its place
    upward = [f"{a} → {b}" for a, targets in graph.items() for b in targets if layer(b) > layer(a)]
    assert upward == []


def test_no_module_imports_a_path_of_d3codec_0_1():
    from d3codec._compat import MOVED

    old = [
        f"{name} → {target}" for name, path in modules().items() for target in _imported_names(path) if target in MOVED
    ]
    assert old == []


def _imported_names(path: Path) -> set[str]:
    """Every dotted module name ``path`` imports (``from a import b`` gives a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_functions_are_short_and_take_few_parameters():
    too_big = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES or len(params) > MAX_PARAMETERS:
                    too_big.append(f"{name}.{node.name}: {lines} lines, {len(params)} parameters")
    assert too_big == []


def test_modules_are_short():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_an_import_for_annotations_alone_is_no_layering():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import d3codec.cli\nimport d3codec.format"
    )
    blocks = [n for n in ast.walk(tree) if _type_checking(n)]
    assert len(blocks) == 1 and not _type_checking(tree.body[0])


def test_every_config_field_of_every_method_says_what_it_is():
    import inspect
    import re
    from dataclasses import fields

    from d3codec.registry import get_method, method_names

    for name in method_names():
        config = type(next(iter(get_method(name).presets.values())))
        source = inspect.getsource(config)
        bare = [f.name for f in fields(config) if not re.search(rf"^\s+{f.name}: [^\n]*#", source, re.M)]
        assert bare == [], f"{name}: {config.__name__} fields without a comment"


def test_every_package_is_installed_by_pyproject():
    """pyproject.toml lists its packages by hand: a package missing there works in an editable install
    (as in CI) and is absent from a wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "d3codec").rglob("__init__.py")}
    assert found - listed == set()
