"""The package's shape (docs/internals.md, "Map of the package"): no import circle, a short top level,
and the package's own modules imported at the top of a module except in the click layer (which
imports a job when its command runs) and where an optional dependency needs it."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "elastic_cli"
LAZY_OK = {"interop/lm_eval_tasks.py": "lm_eval", "interop/export/writer.py": "transformers"}


def modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(name: str, path: Path, mods: dict) -> set[str]:
    """Modules of the package `name` imports anywhere in its file (`from A import B`: A.B when it is a
    module, else A)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in mods}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names} & set(mods)
    return found - {name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_circle():
    mods = modules()
    assert cycles({m: imports(m, p, mods) for m, p in mods.items()}) == []


def test_the_top_level_holds_at_most_twelve_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top


def test_own_modules_are_imported_at_the_top_outside_the_click_layer():
    late = []
    for p in PACKAGE.rglob("*.py"):
        rel = p.relative_to(PACKAGE).as_posix()
        if rel.startswith("cli/"):
            continue
        for fn in ast.walk(ast.parse(p.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("elastic_cli")):
                        if rel not in LAZY_OK:
                            late.append(f"{rel}:{node.lineno}")
    assert late == []


def long_signatures(source: str) -> list[str]:
    """Functions in `source` that take 8 or more parameters (self and cls not counted)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
            if len(names) + (a.vararg is not None) + (a.kwarg is not None) >= 8:
                found.append(f"{node.name}:{node.lineno}")
    return found


def test_long_signature_counter_counts_parameters_not_self():
    assert long_signatures("def f(a, b, c, d, e, f, g, *h): pass\nclass C:\n def m(self, a, b, c, d, e, f, g): pass") == ["f:1"]


def test_at_most_five_functions_outside_the_click_layer_take_eight_parameters():
    """Values travel in records (a plan, a shape, a span), not in long positional lists. The five that
    may: the autograd forward of the merged attention (autograd tracks tensor arguments only), the
    Hugging Face config and forward signatures, and two memories' paper hyperparameters."""
    found = [f"{path.relative_to(PACKAGE)}:{f}" for path in sorted(PACKAGE.rglob("*.py"))
             if path.relative_to(PACKAGE).parts[0] != "cli" for f in long_signatures(path.read_text())]
    assert len(found) <= 5, found
