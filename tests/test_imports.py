"""The packages' import graph: no cycles, and the layering of STYLE.md.

Read from the source (every `import`, lazy ones inside functions too), so
the test imports nothing and runs in milliseconds.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("configs", "pipelines", "model")


def _module_imports(lazy=True):
    """{module: set of our modules it imports}, e.g. pipelines.corpus;
    with `lazy=False` only those imported at import time (not in a def)."""
    trees = {}
    for package in PACKAGES:
        for root, _, names in os.walk(os.path.join(ROOT, package)):
            for name in sorted(n for n in names if n.endswith(".py")):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, ROOT)[: -len(".py")]
                module = rel.replace(os.sep, ".").removesuffix(".__init__")
                with open(path, encoding="utf-8") as f:
                    trees[module] = ast.parse(f.read(), path)
    return {m: _ours(tree, trees, lazy) for m, tree in trees.items()}


def _ours(tree, modules, lazy):
    """Our modules `tree` imports: `from a.b import c` is `a.b.c` when that
    is a module, else `a.b`."""
    found = set()
    for node in _walk(tree, lazy):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] in PACKAGES}
    return found


def _walk(node, lazy):
    """`ast.walk`, skipping function bodies unless `lazy`."""
    yield node
    for child in ast.iter_child_nodes(node):
        if lazy or not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _walk(child, lazy)


def _cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search)."""
    state = {}  # module -> "open" while on the path, "done" after

    def visit(module, path):
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if dep not in graph:
                continue  # a package's name or a symbol, not a module file
            if state.get(dep) == "open":
                return path[path.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep, path + [dep])
                if found:
                    return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            found = visit(module, [module])
            if found:
                return found
    return None


def test_no_import_cycle_at_import_time():
    graph = _module_imports(lazy=False)
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_no_import_cycle_in_pipelines_lazy_imports_included():
    # Issue 19's cycle: options imports corpus, and corpus imported options
    # lazily for its errors (now in pipelines/errors.py).
    graph = _module_imports()
    assert "pipelines.corpus" in graph["pipelines.options"]
    assert "pipelines.options" not in graph["pipelines.corpus"]
    pipelines = {
        m: {d for d in deps if d.startswith("pipelines.")}
        for m, deps in graph.items()
        if m.startswith("pipelines.")
    }
    cycle = _cycle(pipelines)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(
    "package, never",
    [
        ("pipelines", "model"),
        ("model", "pipelines"),
        ("configs", "pipelines"),
        ("configs", "model"),
    ],
)
def test_layering(package, never):
    graph = _module_imports()
    wrong = sorted(
        f"{m} imports {d}"
        for m, deps in graph.items()
        if m.startswith(package + ".")
        for d in deps
        if d.split(".")[0] == never
    )
    assert not wrong, wrong
