"""The package as a whole: importing it changes no environment variable, and its modules import each
other without a cycle (a cycle makes import order matter and hides a missing layer)."""
import ast
import json
import os
import pathlib
import subprocess
import sys

from optcourse.core.paths import REPO_ROOT, apply_offline_environment, offline_environment

PACKAGE = REPO_ROOT / "optcourse"


def module_names() -> dict[str, pathlib.Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in the file, function bodies included)."""
    modules = module_names()
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            # a module's parent packages are imported before it anyway: not an edge of a cycle
            graph[name] |= {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> set[tuple[str, ...]]:
    """Every cycle found by depth-first search, as the sorted tuple of its modules."""
    found, state, stack = set(), {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.add(tuple(sorted(stack[stack.index(nxt):])))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_cycle_finder_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {("a", "b", "c")}
    assert cycles({"a": {"b"}, "b": set()}) == set()


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 30 and sum(map(len, graph.values())) > 50  # it read the package's imports
    found = cycles(graph)
    assert not found, f"import cycles: {sorted(found)}"


def test_importing_every_module_leaves_the_environment_alone():
    modules = sorted(name for name in module_names() if not name.endswith("__main__"))
    code = f"""
import importlib, json, os, sys
before = dict(os.environ)
skipped = []
for name in {modules!r}:
    try:
        importlib.import_module(name)
    except ImportError as err:  # optional components (ray, tensorrt, vllm) on this machine
        if (err.name or "").startswith("optcourse"):
            raise
        skipped.append(name)
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(json.dumps({{"changed": changed, "skipped": skipped}}))
"""
    # without the variables the offline set-up would add, so that adding one shows
    env = {key: value for key, value in os.environ.items() if key not in offline_environment()}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO_ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["changed"] == [], f"importing the package changed {result['changed']}"
    assert len(result["skipped"]) < len(modules) / 4, result["skipped"]


def test_offline_environment_is_applied_on_request(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    apply_offline_environment()
    assert os.environ["HF_HUB_OFFLINE"] == "1"
