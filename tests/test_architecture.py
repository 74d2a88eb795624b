"""The dependency arrows of docs/ARCHITECTURE.md, checked on the source (every import, also those
inside functions). The layers, lowest first; a module imports only its own layer and the ones below:

    1  schema utils run lightning encoders       the vocabulary, helpers, running jobs, Lightning glue
    2  data artefact losses evaluation           (data -> artefact; evaluation imports only the schema)
    3  student teacher                           (never each other)
    4  stages serve search report                (stages never import stages; serve and search never Lightning)
    5  cli train __main__                        the entry points

Further: losses know tensors; scoring loads without Lightning; private Lightning names only in
lrkd/lightning/compat.py; no import cycle between modules nor between rooms; no module much over
400 lines.
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

# LAYOUT.md's layers, lowest first: a room imports only its own layer and those below
LAYERS = (
    ("schema", "utils", "run", "lightning", "encoders"),
    ("data", "artefact", "losses", "evaluation"),
    ("student", "teacher"),
    ("stages", "serve", "search", "report"),
    ("cli", "train", "__main__"),
)
LAYER = {f"lrkd.{room}": n for n, rooms in enumerate(LAYERS, 1) for room in rooms}
# the stages' shared modules: no stage of their own (lrkd.stages is the registry, get_stage)
STAGE_HELPERS = ("lrkd.stages", "lrkd.stages.base", "lrkd.stages.teacher_common")


def room(module: str) -> str:
    """``lrkd.teacher.label.annotate`` -> ``lrkd.teacher``."""
    return ".".join(module.split(".")[:2])


def lrkd_modules(imported: set[str]) -> set[str]:
    """The modules of lrkd that import names resolve to (``lrkd.losses.WeightedLoss`` -> ``lrkd.losses``);
    the bare package ``lrkd`` (run by every import of it) is left out."""
    out = set()
    for name in imported:
        while name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in MODULES and name != "lrkd":
            out.add(name)
    return out


def _offending(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for name, imported in IMPORTS.items():
        if name == package or name.startswith(package + "."):
            hits = sorted(m for m in imported if any(m == f or m.startswith(f + ".") for f in forbidden))
            if hits:
                bad[name] = hits
    return bad


def test_every_module_lives_in_a_room_of_a_layer():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= 6, loose
    assert sorted(n for n in MODULES if n != "lrkd" and room(n) not in LAYER) == []


def test_no_arrow_climbs_a_layer():
    climbing = {name: sorted(m for m in lrkd_modules(imported) if LAYER[room(m)] > LAYER[room(name)])
                for name, imported in IMPORTS.items() if name != "lrkd"}
    assert {k: v for k, v in climbing.items() if v} == {}


@pytest.mark.parametrize("package, allowed", [
    # evaluation imports no other layer: the vocabulary only
    ("lrkd.evaluation", ("lrkd.evaluation", "lrkd.schema")),
    # losses read the batch contract only (its keys, UNLABELLED = -1), not the data pipeline
    ("lrkd.losses", ("lrkd.losses", "lrkd.schema", "lrkd.data.batch")),
    # the rooms of layer 1 know no other part of lrkd (run's resolvers read the rank helpers)
    ("lrkd.schema", ("lrkd.schema",)),
    ("lrkd.utils", ("lrkd.utils",)),
    ("lrkd.encoders", ("lrkd.encoders", "lrkd.utils")),
    ("lrkd.lightning", ("lrkd.lightning", "lrkd.utils")),
    ("lrkd.run", ("lrkd.run", "lrkd.lightning.distributed", "lrkd.utils")),
])
def test_rooms_that_import_only_the_vocabulary(package, allowed):
    bad = {name: sorted(m for m in lrkd_modules(imported) if not any(m == a or m.startswith(a + ".") for a in allowed))
           for name, imported in IMPORTS.items() if name == package or name.startswith(package + ".")}
    assert {k: v for k, v in bad.items() if v} == {}


@pytest.mark.parametrize("package, forbidden", [
    # data knows no model beyond a tokenizer; it reads the artefact, which knows no data
    ("lrkd.data", ("lrkd.losses", "lrkd.evaluation")),
    ("lrkd.artefact", ("lrkd.data", "lrkd.losses", "lrkd.evaluation")),
    ("lrkd.losses", ("lightning", "hydra", "transformers")),
    ("lrkd.student", ("lrkd.teacher",)),
    ("lrkd.teacher", ("lrkd.student",)),
    # the teacher's base modules know none of its jobs; labelling may reuse training's examples
    ("lrkd.teacher.model", ("lrkd.teacher.runtime", "lrkd.teacher.train", "lrkd.teacher.reward", "lrkd.teacher.label")),
    ("lrkd.teacher.prompts", ("lrkd.teacher.runtime", "lrkd.teacher.train", "lrkd.teacher.reward", "lrkd.teacher.label")),
    ("lrkd.teacher.parse", ("lrkd.teacher.runtime", "lrkd.teacher.train", "lrkd.teacher.reward", "lrkd.teacher.label")),
    ("lrkd.teacher.tokens", ("lrkd.teacher.runtime", "lrkd.teacher.train", "lrkd.teacher.reward", "lrkd.teacher.label")),
    ("lrkd.teacher.runtime", ("lrkd.teacher.train", "lrkd.teacher.reward", "lrkd.teacher.label")),
    ("lrkd.teacher.train", ("lrkd.teacher.reward", "lrkd.teacher.label")),
    ("lrkd.teacher.reward", ("lrkd.teacher.runtime", "lrkd.teacher.train", "lrkd.teacher.label")),
    # serving needs the served RelevanceStudent only: no Lightning, no training machinery
    ("lrkd.serve", ("lightning", "pytorch_lightning", "lrkd.lightning", "lrkd.stages", "lrkd.teacher",
                    "lrkd.student.module", "lrkd.data.datamodule", "lrkd.data.sampler")),
    # the architecture search runs in the sweeper's process: no training machinery there
    ("lrkd.search", ("lightning", "pytorch_lightning", "lrkd.lightning", "lrkd.stages", "lrkd.teacher",
                     "lrkd.student.module", "lrkd.data.datamodule")),
    ("lrkd.report", ("lightning", "lrkd.lightning", "lrkd.stages", "lrkd.teacher", "lrkd.student", "lrkd.serve")),
])
def test_dependency_arrows(package, forbidden):
    assert _offending(package, forbidden) == {}


def test_stages_never_import_stages():
    """A stage is run by the registry (lrkd.stages.get_stage), never imported by another stage; what
    they share lives in lrkd.stages.base and lrkd.stages.teacher_common."""
    bad = {}
    for name, imported in IMPORTS.items():
        if room(name) == "lrkd.stages" and name not in STAGE_HELPERS:
            hits = sorted(m for m in lrkd_modules(imported) if room(m) == "lrkd.stages" and m not in STAGE_HELPERS)
            if hits:
                bad[name] = hits
    assert bad == {}


def test_no_cycle_between_rooms():
    graph = {r: set() for r in LAYER}
    for name, imported in IMPORTS.items():
        if name != "lrkd":
            graph[room(name)] |= {room(m) for m in lrkd_modules(imported)} - {room(name)}
    assert _cycles(graph) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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
    return cycles


def test_no_import_cycle():
    graph = {name: {m for m in imported if m in MODULES and m != name} for name, imported in IMPORTS.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of the architecture
    graph = {n: {m for m in deps if not (n.startswith(m + ".") and MODULES[m].name == "__init__.py")}
             for n, deps in graph.items()}
    assert _cycles(graph) == []


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
    """The serving modules (eager and ONNX scorers, predict, export, the HF form, and `lrkd serve`'s
    server, app, batcher and schemas) import no Lightning and no training code. (``import lrkd`` reads
    lrkd.lightning.distributed for the config resolvers; its module level imports no Lightning.)"""
    code = ("import sys; import lrkd.serve.config, lrkd.serve.scorers, lrkd.serve.predict, lrkd.serve.export, "
            "lrkd.serve.hf, lrkd.serve.server, lrkd.serve.app, lrkd.serve.service, lrkd.serve.batching, "
            "lrkd.serve.schemas, lrkd.serve.metrics; "
            "bad = sorted(m for m in sys.modules if m == 'lightning' or m.startswith('lightning.') "
            "or m.startswith('pytorch_lightning') or (m.startswith(('lrkd.lightning.', 'lrkd.stages', 'lrkd.teacher', "
            "'lrkd.student.module', 'lrkd.data.datamodule')) and m != 'lrkd.lightning.distributed')); "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout + out.stderr
