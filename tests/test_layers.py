"""The import direction of the package (docs/LAYOUT.md): a module imports only from its own
layer or the layers below, function-local imports included.

    0 core/, kernels/  the index, the head and its step, rows, estimates, quantization, context
    1 backends/        what runs a model's body (transformers, llama.cpp)
    2 data/, build/    text, chat, hidden states; `flashhead build` (clustering, fit, calibration)
    3 integrations/    transformers' Auto API, vLLM, lm-eval
    4 tools/, serve/   generate (the one loop), evaluate, bench; the server
    5 cli/
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src" / "flashhead"
LAYERS = {"core": 0, "kernels": 0, "backends": 1, "data": 2, "build": 2, "integrations": 3, "tools": 4,
          "serve": 4, "cli": 5}
# Imports that still point up, to be removed (each names why it is here); a new one fails the test,
# and so does one that is gone (then delete it here).
KNOWN = {
    ("build", "tools"),               # the build's held-out agreement uses tools.evaluate's metrics
    ("build", "integrations"),        # the build loads the model through integrations.hf.load
}


def layer(module: str) -> int:
    parts = module.split(".")
    if parts[0] in ("", "__version__"):
        return 0
    assert parts[0] in LAYERS, f"{module}: a top-level module outside the layers' folders"
    return LAYERS[parts[0]]


def imports(path: Path, module: str) -> set[str]:
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".") if pkg else []
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
                names = [mod + "." + a.name if not node.module and mod else (mod or a.name) for a in node.names]
            elif (node.module or "").startswith("flashhead"):
                names = [node.module.removeprefix("flashhead").lstrip(".")]
            else:
                continue
            out.update(n for n in names if n)
        elif isinstance(node, ast.Import):
            out.update(a.name.removeprefix("flashhead").lstrip(".") for a in node.names
                       if a.name.startswith("flashhead."))
    return out


def test_imports_point_down():
    found = set()
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        module = ".".join(parts)
        if not module:
            continue                      # the package root re-exports (lazily) from every layer
        for dep in imports(path, module):
            if layer(dep) > layer(module):
                found.add((module, dep.split(".")[0] if dep.split(".")[0] != "integrations" else
                           ".".join(dep.split(".")[:2])))
    assert found - KNOWN == set(), f"imports pointing up: {sorted(found - KNOWN)}"
    assert KNOWN - found == set(), f"gone, remove from KNOWN: {sorted(KNOWN - found)}"


def test_backends_and_core_import_no_tool():
    """The layers this work is built on: core and backends reach no integration, tool or CLI."""
    for path in list(ROOT.glob("backends/*.py")) + list(ROOT.glob("kernels/*.py")) + list(ROOT.glob("core/*.py")):
        rel = ".".join(p for p in path.relative_to(ROOT).with_suffix("").parts if p != "__init__")
        for dep in imports(path, rel):
            assert layer(dep) <= 1, (rel, dep)


def test_no_import_cycles():
    """No two modules import each other, directly or through others (function-local imports
    included; a package's __init__ counts as the package)."""
    paths = {".".join(p for p in path.relative_to(ROOT).with_suffix("").parts if p != "__init__"): path
             for path in ROOT.rglob("*.py")}
    graph = {}
    for mod, path in paths.items():
        if not mod:
            continue
        deps = set()
        for dep in imports(path, mod):
            while dep and dep not in paths:         # `from .x import name`: the module x
                dep = dep.rpartition(".")[0]
            if dep and dep != mod:
                deps.add(dep)
        graph[mod] = deps
    state, cycles = {}, []

    def visit(m, trail):
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(trail[trail.index(d):] + [m, d] if d in trail else [m, d])
            elif d not in state:
                visit(d, trail + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    assert not cycles, f"import cycles: {cycles}"


# The package's own modules imported inside a function, outside cli/ (whose commands import what
# they need when they run, so `flashhead --help` stays fast): each for a reason named here. A new
# one fails the test: import at the top of the module instead, or add it with its reason.
LAZY = {
    ("", "tools.model"),                       # `flashhead.load`: the package root stays light
    ("build", "tools.evaluate"),               # pointing up (KNOWN)
    ("build", "integrations"),                 # pointing up (KNOWN)
    ("core.index", ""),                        # __version__: the package root imports core
    ("integrations.vllm", "integrations.vllm.models"),    # vLLM's plugin entry: vLLM loads it when it needs it
    ("integrations.vllm", "integrations.vllm.logits"),
    ("integrations.vllm.logits", "integrations.vllm.context"),
    ("integrations.vllm.models", "integrations"),          # hf_auto: transformers, when vLLM asks
    ("kernels.triton_path", "kernels"),        # triton_kernels: Triton, optional
    ("serve", "serve.app"),                    # FastAPI, optional
    ("tools.bench", "backends.llamacpp"),      # llama-cpp-python, optional
    ("tools.evaluate", "backends.llamacpp"),
    ("tools.evaluate", "backends.llamacpp_quantize"),
    ("tools.model", "backends.llamacpp"),
    ("tools.model", "integrations"),           # hf: transformers, only for that backend
}


def test_function_local_imports_have_a_reason():
    found = set()
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "cli":
            continue
        module = ".".join(p for p in rel.with_suffix("").parts if p != "__init__")
        pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and node.level:
                        base = pkg.split(".") if pkg else []
                        base = base[:len(base) - (node.level - 1)]
                        found.add((module, ".".join(base + ([node.module] if node.module else []))))
    assert found - LAZY == set(), f"function-local imports without a reason: {sorted(found - LAZY)}"
    assert LAZY - found == set(), f"gone, remove from LAZY: {sorted(LAZY - found)}"
