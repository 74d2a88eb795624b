"""The dependency arrows of docs/ARCHITECTURE.md, checked on the source (every import, also those
inside functions):

    stages -> (teacher | student) -> (losses, data, artefact, evaluation) -> nothing of theirs

data knows no model; losses know tensors; the student never imports the teacher (nor the teacher
the student); serve never imports Lightning, and scoring loads without it; private Lightning names
only in lrkd/lightning/compat.py; no import cycle; no module much over 400 lines.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lrkd"
MAX_LINES = 410  # "about 400"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every module name an import statement of ``path`` names (absolute imports; lrkd uses no other)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


IMPORTS = {name: _imports(path) for name, path in MODULES.items()}


def _offending(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for name, imported in IMPORTS.items():
        if name == package or name.startswith(package + "."):
            hits = sorted(m for m in imported if any(m == f or m.startswith(f + ".") for f in forbidden))
            if hits:
                bad[name] = hits
    return bad


@pytest.mark.parametrize("package, forbidden", [
    ("lrkd.data", ("lrkd.student", "lrkd.teacher", "lrkd.losses", "lrkd.serve", "lrkd.stages", "lrkd.evaluation")),
    # losses read the batch contract only (its keys, UNLABELLED = -1), not the data pipeline
    ("lrkd.losses", ("lrkd.data.datamodule", "lrkd.data.sources", "lrkd.data.tokenize", "lrkd.data.encode",
                     "lrkd.data.io", "lrkd.data.pool", "lrkd.data.sampler", "lrkd.data.splits", "lrkd.student", "lrkd.teacher", "lrkd.serve", "lrkd.stages", "lrkd.artefact",
                     "lrkd.evaluation", "lightning", "hydra", "transformers")),
    ("lrkd.student", ("lrkd.teacher", "lrkd.stages", "lrkd.serve")),
    ("lrkd.teacher", ("lrkd.student", "lrkd.stages", "lrkd.serve")),
    ("lrkd.artefact.manifest", ("lrkd.student", "lrkd.teacher", "lrkd.stages", "lrkd.serve")),
    ("lrkd.artefact.reader", ("lrkd.student", "lrkd.teacher", "lrkd.stages", "lrkd.serve")),
    ("lrkd.artefact.writer", ("lrkd.student", "lrkd.teacher", "lrkd.stages", "lrkd.serve")),
    ("lrkd.serve", ("lightning", "lrkd.stages", "lrkd.teacher", "lrkd.student.module", "lrkd.data.datamodule")),
    # the architecture search runs in the sweeper's process: no training machinery there
    ("lrkd.search", ("lightning", "lrkd.stages", "lrkd.teacher", "lrkd.student.module", "lrkd.data.datamodule")),
    ("lrkd.evaluation.metrics", ("lrkd.student", "lrkd.teacher", "lrkd.stages", "lrkd.serve")),
])
def test_dependency_arrows(package, forbidden):
    assert _offending(package, forbidden) == {}


def test_no_import_cycle():
    graph = {name: {m for m in imported if m in MODULES and m != name} for name, imported in IMPORTS.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of the architecture
    graph = {n: {m for m in deps if not (n.startswith(m + ".") and MODULES[m].name == "__init__.py")}
             for n, deps in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == []


def test_private_lightning_names_only_in_the_compat_module():
    bad = {}
    for name, path in MODULES.items():
        if name == "lrkd.lightning.compat":
            continue
        text = path.read_text()
        hits = [m for m in IMPORTS[name] if m.startswith("lightning") and any(p.startswith("_") for p in m.split("."))]
        hits += [w for w in ("_accelerator_connector", ".fit_loop", "_checkpoint_connector") if w in text]
        if hits:
            bad[name] = hits
    assert bad == {}


def test_no_module_is_much_over_400_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_scoring_loads_without_lightning():
    """The serving modules (eager and ONNX scorers, predict, export, the HF form) import no Lightning."""
    code = ("import sys; import lrkd.serve.config, lrkd.serve.scorers, lrkd.serve.predict, lrkd.serve.export, "
            "lrkd.serve.hf; bad = sorted(m for m in sys.modules if m == 'lightning' or m.startswith('lightning.') "
            "or m.startswith('pytorch_lightning')); print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout + out.stderr
