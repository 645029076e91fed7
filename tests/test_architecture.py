"""sweep/'s import graph has no circle, read from the source with `ast` (nothing is imported to check it).

An edge A → B is every module-level or function-level import in A of a sweep module B. Importing `a.b.c` also
runs the faces `a/__init__.py` and `a/b/__init__.py`, so A gets an edge to each face above B that is not a package
A itself lives in (its own package's face has already run by the time A does). A submodule never imports its
own package's face: that face imports the submodule, so the name it wants may not exist yet.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "sweep"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _imports(name: str, modules: dict[str, Path]) -> set[str]:
    """The sweep modules `name` imports, the faces above them included."""
    tree = ast.parse(modules[name].read_text())
    package = name if _is_package(name, modules) else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # a relative import: `from ..x import y` in sweep.a.b is sweep.x
                above = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(above + ([base] if base else []))
            for alias in node.names:  # `from sweep.data import esc50` imports the submodule
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in modules else base)
    edges = set()
    for target in targets:
        if target not in modules:
            continue
        edges.add(target)
        parts = target.split(".")
        for i in range(1, len(parts)):
            face = ".".join(parts[:i])
            if face in modules and not (package == face or package.startswith(face + ".")):
                edges.add(face)
    edges.discard(name)
    return edges


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, modules) for name in modules}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph, as the list of its modules in import order, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_in_sweep() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " → ".join(cycle)


def test_the_check_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_submodule_imports_its_own_face() -> None:
    modules = _modules()
    bad = [
        f"{name} imports {face}"
        for name in modules
        if not _is_package(name, modules)
        for face in _imports(name, modules)
        if _is_package(face, modules) and name.startswith(face + ".") and face != "sweep"
    ]
    assert not bad, bad


def test_the_schema_is_the_bottom_layer() -> None:
    assert _graph()["sweep.schema"] == set()


# ---- the typed config -----------------------------------------------------------------------------------

MAPPING_METHODS = {"get", "items", "keys", "values"}


def _schema_keys(node: dict, path: tuple[str, ...]) -> set[str] | None:
    """The keys under `path` in the schema, over every variant; None where `path` is a value, not a section."""
    for part in path:
        node = _with_variants(node).get(part)
        if not isinstance(node, dict):
            return None
    return set(_with_variants(node))


def _with_variants(node: dict) -> dict:
    keys = {k: v for k, v in node.items() if k != "_variants"}
    variants = node.get("_variants")
    if variants is not None:
        for name in variants.names():
            keys.update(variants.params(name))
    return keys


def _section_of(value: ast.expr) -> tuple[str, ...] | None:
    """The config path `value` reads when it is `cfg`, `cfg.a…` or `typed(…).a…`; else None."""
    chain: list[str] = []
    while isinstance(value, ast.Attribute):
        chain.insert(0, value.attr)
        value = value.value
    if isinstance(value, ast.Name) and value.id == "cfg":
        return tuple(chain)
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "typed":
        return tuple(chain)
    return None


def _cfg_chains() -> list[tuple[str, int, tuple[str, ...]]]:
    """Every config read in sweep/ through attributes: (file, line, (a, b, …)) for `cfg.a.b`, for
    `typed(config).a.b`, and for `t.b` where a function bound `t = cfg.a` (or `typed(config).a`)."""
    found = []
    for path in ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
                continue
            aliases = {"cfg": ()}
            for node in ast.walk(func):
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    section = _section_of(node.value)
                    if section is not None and node.targets[0].id != "cfg":
                        aliases[node.targets[0].id] = section
            for node in ast.walk(func):
                if not isinstance(node, ast.Attribute):
                    continue
                chain: list[str] = []
                inner: ast.expr = node
                while isinstance(inner, ast.Attribute):
                    chain.insert(0, inner.attr)
                    inner = inner.value
                if isinstance(inner, ast.Name) and inner.id in aliases:
                    found.append((str(path.relative_to(ROOT.parent)), node.lineno, aliases[inner.id] + tuple(chain)))
                elif isinstance(inner, ast.Call) and _section_of(inner) == ():
                    found.append((str(path.relative_to(ROOT.parent)), node.lineno, tuple(chain)))
    return sorted(set(found))  # a function's reads are also seen from its module


def test_every_cfg_attribute_is_a_schema_key() -> None:
    """`cfg.train.lrr` fails here, without running the line that reads it."""
    from sweep.config.sections import schema

    bad = []
    for file, line, chain in _cfg_chains():
        for depth in range(len(chain)):
            keys = _schema_keys(schema(), chain[:depth])
            if keys is None:
                break  # past a value: `.startswith`, a tuple's `.index`, …
            if chain[depth] not in keys and chain[depth] not in MAPPING_METHODS:
                bad.append(f"{file}:{line}: cfg.{'.'.join(chain[: depth + 1])}")
                break
    assert _cfg_chains(), "no `cfg.` reads found: the check would pass vacuously"
    assert not bad, "not config keys: " + ", ".join(bad)


def test_typed_sections_are_the_schemas() -> None:
    from sweep.config.sections import schema
    from sweep.config.typed import SECTIONS

    nested = set()

    def walk(node: dict, here: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                nested.add(f"{here}.{key}" if here else key)
                walk(value, f"{here}.{key}" if here else key)

    walk(schema(), "")
    assert set(SECTIONS) == nested


def test_status_and_the_command_line_start_without_torch() -> None:
    """`sweep --help`, `sweep status NAME` and `sweep cancel NAME` import no registry: torch alone is ~2 s."""
    imports = "import sys, sweep.cli, sweep.look.status, sweep.run.jobs"
    code = imports + "; print(sorted({'torch', 'sweep.models'} & {*sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT.parent)
    assert out.stdout.strip() == "[]", out.stdout
