"""The package has no import cycles, counting imports inside functions too.

A function-level import hides a cycle from Python's import machinery but not from a
reader: the two modules still depend on each other. Shared helpers belong in leaf modules
(``captioner.version``, ``cache``, ``device``, ``io``, ``errors``) instead.
"""
from __future__ import annotations

import ast
from pathlib import Path

import captioner

PACKAGE_DIR = Path(captioner.__file__).resolve().parent



def _module_files() -> dict[str, Path]:
    """Dotted module name → source file, for every module of the package."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = ("captioner", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules that ``name`` imports anywhere in its file (functions included)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # a package's own name is its anchor for level 1; a module's is its parent
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module
            # `from . import x` imports the submodule x when there is one, else a name of base
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _module_files()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each as
    one cycle through it, written ``a → b → … → a``."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(set(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first search)."""
    start = min(component)
    parent = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{sorted(component)} is not strongly connected")


def test_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "captioner.version" in graph["captioner.model"]  # module level, `from .version import`
    assert "captioner.cache" in graph["captioner.data.feature_cache"]
    # `from . import x` with a submodule x is an edge to that submodule
    assert "captioner.distributed" in graph["captioner.train.loop"]


def test_find_cycles_reports_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


# --- layers: inference never imports training -----------------------------------------------
FRONT_DOORS = {"captioner", "captioner.cli"}  # the package's front door and the command line


def test_only_training_and_the_front_doors_import_training():
    graph = import_graph()
    training = {name for name in graph if name == "captioner.train" or name.startswith("captioner.train.")}
    offenders = {
        name: sorted(graph[name] & training)
        for name in graph
        if name not in training and name not in FRONT_DOORS and graph[name] & training
    }
    assert not offenders, f"modules outside captioner.train importing it: {offenders}"


def test_the_exported_runtime_imports_nothing_that_needs_torch():
    """captioner.exported (and what it imports, transitively) never imports torch at module level."""
    graph = import_graph()
    modules = _module_files()
    seen, stack = set(), ["captioner.exported"]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(graph[name])
    torch_users = sorted(name for name in seen if _imports_torch_at_module_level(modules[name]))
    assert not torch_users, f"captioner.exported reaches torch through {torch_users}"


def _imports_torch_at_module_level(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in tree.body:  # module level only: imports inside functions run when called
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        if any(n == "torch" or n.startswith("torch.") or n.startswith("torchvision") for n in names):
            return True
    return False


# --- no logic written twice ----------------------------------------------------------------------
WINDOW = 6  # significant lines: what the duplicates tool pairs


def _significant_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, whitespace-folded text) of the lines that carry logic: not blank, not a
    comment, not an import, not lone punctuation, not inside a docstring."""
    source = path.read_text(encoding="utf-8")
    docstrings = set()  # and imports, which may span lines
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            docstrings.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    lines = []
    for number, line in enumerate(source.splitlines(), 1):
        text = " ".join(line.split())
        if not text or text.startswith("#") or number in docstrings or not any(c.isalnum() for c in text):
            continue
        lines.append((number, text))
    return lines


def test_no_run_of_lines_is_written_twice_under_src():
    seen: dict[tuple[str, ...], str] = {}
    repeats = []
    for name, path in _module_files().items():
        lines = _significant_lines(path)
        for i in range(len(lines) - WINDOW + 1):
            window = tuple(text for _, text in lines[i : i + WINDOW])
            where = f"{path.relative_to(PACKAGE_DIR)}:{lines[i][0]}"
            if window in seen and not seen[window].startswith(where.split(":")[0] + ":"):
                repeats.append(f"{where} repeats {seen[window]}")
            seen.setdefault(window, where)
    assert not repeats, "the same lines in two places:\n" + "\n".join(repeats[:20])


def test_decoding_and_preprocessing_are_defined_once():
    """The search, the captions built from it and the preprocessing semantics have one home each,
    which the torch model and the exported runtime share."""
    definitions: dict[str, list[str]] = {}
    for name, path in _module_files().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                definitions.setdefault(node.name, []).append(name)
    for symbol, home in {"beam_search": "captioner.decoding", "greedy": "captioner.decoding",
                         "sample": "captioner.decoding", "DecodeOptions": "captioner.decoding",
                         "Hypothesis": "captioner.decoding", "center_crop": "captioner.data.images",
                         "normalize": "captioner.data.images", "captions_from_results": "captioner.captions",
                         "ConfidenceModel": "captioner.confidence"}.items():
        assert definitions.get(symbol) == [home], f"{symbol} is defined in {definitions.get(symbol)}, not once in {home}"
