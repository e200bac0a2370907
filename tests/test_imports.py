"""No import cycles among the package modules, function-level imports included.

Every module of the four packages is parsed with ``ast``; every ``import`` / ``from ... import`` anywhere in
it (module level, inside functions and methods, inside ``try``) is an edge, relative imports resolved.
``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``. Imports under
``if TYPE_CHECKING:`` never run and are skipped. The one edge left out on purpose is the registries' lazy
plugin loader into ``zigscan.plugins`` (the plugins fill the registries through their hooks); the second
test checks that it is the only way in, apart from the command line.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"scanpaths": "zigscan.scanpaths", "backbones": "zigscan.backbones",
            "diffusion": "zigscan.diffusion", "plugins": "zigscan.plugins"}
PLUGINS = "zigscan.plugins"
LAZY_LOADER = "zigscan.scanpaths.registries"  # plugin_loader: the registries' one way into zigscan.plugins
CLI_MODULES = {"zigscan.diffusion.cli"}  # the command line may import the plugin commands


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the four packages."""
    found: dict[str, Path] = {}
    for folder, dotted in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([dotted, *parts])] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``if TYPE_CHECKING:`` blocks."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                skip.update(id(n) for n in ast.walk(inner))
    return skip


def _edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that ``name`` imports, anywhere in its file."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            # `import zigscan.backbones.mixers.base` also runs the parent packages, but those are
            # not part of a cycle unless they import the importer back, which their own edges show
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _edges(name, path, modules) for name, path in modules.items()}
    lazy = graph.get(LAZY_LOADER, set())
    graph[LAZY_LOADER] = {t for t in lazy if not (t == PLUGINS or t.startswith(PLUGINS + "."))}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a path a -> ... -> a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for comp in components:  # a shortest cycle through the component's first module, for the message
        members, start = set(comp), comp[0]
        paths, seen = [[start]], {start}
        found = None
        while paths and found is None:
            nxt = []
            for p in paths:
                for w in sorted(graph[p[-1]] & members):
                    if w == start:
                        found = p + [start]
                        break
                    if w not in seen:
                        seen.add(w)
                        nxt.append(p + [w])
                if found:
                    break
            paths = nxt
        cycles.append(found or comp)
    return cycles


def test_the_parser_sees_function_level_and_relative_imports():
    """Guards the test itself: edges it must find (a module-level, a function-level and a relative one)."""
    graph = _graph()
    assert "zigscan.scanpaths.registries" in graph["zigscan.scanpaths.registry"]  # module level, relative
    assert "zigscan.scanpaths.base" in graph["zigscan.scanpaths.registry"]  # inside a function, relative
    assert "zigscan.diffusion.vae" in graph["zigscan.diffusion.builder"]  # inside a function
    assert "zigscan.diffusion.interpolants" in graph["zigscan.diffusion.config"]  # `from . import name`
    assert "zigscan.backbones" in graph["zigscan.diffusion.builder"]  # absolute, a package
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycle_among_package_modules():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles (function-level imports count):\n" + "\n".join(
        " -> ".join(c) for c in cycles)


def test_only_the_lazy_loader_and_the_cli_import_plugins():
    graph = _graph()
    modules = _modules()
    raw_lazy = _edges(LAZY_LOADER, modules[LAZY_LOADER], modules)
    assert any(t.startswith(PLUGINS) for t in raw_lazy), "the plugin loader no longer reaches zigscan.plugins"
    offenders = {name: sorted(t for t in targets if t == PLUGINS or t.startswith(PLUGINS + "."))
                 for name, targets in graph.items()
                 if not name.startswith(PLUGINS) and name not in CLI_MODULES | {LAZY_LOADER}}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"modules outside zigscan.plugins that import it: {offenders}"


def test_only_the_cli_imports_the_trainer():
    """Sampling and eval get their objects from the builder; the trainer trains."""
    importers = sorted(n for n, targets in _graph().items() if "zigscan.diffusion.trainer" in targets)
    assert importers == sorted(CLI_MODULES), importers
