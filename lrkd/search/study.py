"""``ArchitectureSearch``: what lrkd's Optuna sweeper (``hydra.sweeper.search``) does around an
architecture study (``hparams_search=student_arch``):

- :meth:`prepare` (before the first trial): the architectures of the search space (the config keys of
  ``architecture`` that ``hydra.sweeper.params`` sweeps, the others fixed at the base config's value)
  are timed into the latency table (lrkd.search.latency_table; rows already there are reused);
- :meth:`is_feasible`: a configuration is within the latency budget (``latency_budget_ms`` on the
  table's ms, and/or ``latency_budget_ratio`` of the unpruned student, at ``budget_batch``); the
  sweeper never trains one that is not, and the predictor sampler never proposes one;
- :meth:`objectives`: with two directions (maximise quality, minimise latency), the trial's latency
  from the table is appended to the quality the job returned: Optuna's multi-objective samplers
  (TPE, NSGA-II, GP) then search the Pareto front;
- :meth:`write_report` (after the last trial): lrkd.search.report.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lrkd.run.resolvers import ROOT_DIR
from lrkd.search.latency_table import ARCH_FIELDS, Architecture, LatencyTable
from lrkd.search.space import finite_values
from lrkd.utils import plain

log = logging.getLogger(__name__)

DEFAULT_ARCHITECTURE = {"num_layers": "student.prune.num_layers",
                        "intermediate_size": "student.prune.intermediate_size",
                        "max_length": "data.max_length", "extractor": "extractor"}
EXTRACTOR_NAMES = {"NoExtractor": "none", "MLPExtractor": "mlp", "PolyExtractor": "poly", "GATExtractor": "gat"}


def _int_or_none(value: Any) -> int | None:
    if value is None or str(value).strip().lower() in ("null", "none", "", "full"):
        return None
    return int(float(value))


class ArchitectureSearch:
    """See the module docstring. ``architecture``: {field of :class:`Architecture`: config key};
    ``table_dir``: where latency tables live (one CSV per base student and runtime; ``table`` names
    a file instead); the other timing arguments are those of :meth:`LatencyTable.measure`."""

    def __init__(self, architecture: Mapping[str, str] | None = None, latency_budget_ms: float | None = None,
                 latency_budget_ratio: float | None = None, budget_batch: int = 1, quality_tolerance: float = 0.01,
                 runtime: str = "eager", threads: int = 1, batch_sizes: Sequence[int] = (1,), iterations: int = 30,
                 rounds: int = 5, warmup: int = 3, group_size: int = 4, table: str | None = None,
                 table_dir: str | None = None, save_chosen: bool = True):
        self.keys = dict(DEFAULT_ARCHITECTURE if architecture is None else plain(architecture))
        unknown = sorted(set(self.keys) - set(ARCH_FIELDS))
        if unknown:
            raise ValueError(f"search.architecture: unknown fields {unknown}; expected {list(ARCH_FIELDS)}")
        self.budget_ms = None if latency_budget_ms is None else float(latency_budget_ms)
        self.budget_ratio = None if latency_budget_ratio is None else float(latency_budget_ratio)
        self.budget_batch = int(budget_batch)
        self.batch_sizes = sorted({int(b) for b in (batch_sizes or (1,))} | {self.budget_batch})
        if not 0 <= float(quality_tolerance) < 1:
            raise ValueError(f"search.quality_tolerance must be in [0, 1), got {quality_tolerance}")
        self.quality_tolerance = float(quality_tolerance)
        self.timing = {"runtime": str(runtime), "threads": int(threads), "iterations": int(iterations),
                       "rounds": int(rounds), "warmup": int(warmup), "group_size": int(group_size)}
        self.table_path, self.table_dir, self.save_chosen = table, table_dir, bool(save_chosen)
        self.config: DictConfig | None = None
        self.distributions: dict = {}
        self.table: LatencyTable | None = None
        self.reference: Architecture | None = None
        self.full: tuple[int, int] | None = None
        self.archs: list[Architecture] = []

    # ------------------------------------------------------------------------------ the student
    def base_value(self, field: str) -> Any:
        key = self.keys.get(field, DEFAULT_ARCHITECTURE[field])
        if field == "extractor" and key == "extractor":
            choice = OmegaConf.select(self.config, "hydra.runtime.choices.extractor", default=None)
            if choice:
                return str(choice)
            target = str(OmegaConf.select(self.config, "extractor._target_", default="")).rsplit(".", 1)[-1]
            return EXTRACTOR_NAMES.get(target, target)
        return OmegaConf.select(self.config, key, default=None)

    def architecture(self, params: Mapping[str, Any]) -> Architecture:
        """The architecture of a trial's parameters (unswept fields at the base config's value); a
        layer count or FFN size equal to the encoder's own reads as None (unpruned)."""
        values = {f: params[self.keys[f]] if f in self.keys and self.keys[f] in params else self.base_value(f)
                  for f in ARCH_FIELDS}
        layers, ffn = _int_or_none(values["num_layers"]), _int_or_none(values["intermediate_size"])
        if self.full is not None:
            layers = None if layers == self.full[0] else layers
            ffn = None if ffn == self.full[1] else ffn
        return Architecture(layers, ffn, int(values["max_length"]), str(values["extractor"]))

    def build(self, arch: Architecture):
        """A RelevanceStudent of ``arch`` in eval mode (random heads: for timing only)."""
        from lrkd.student.model import RelevanceStudent  # lazy: transformers, once the sweep measures latency

        encoder = OmegaConf.to_container(self.config.student, resolve=True)
        encoder["prune"] = {**(encoder.get("prune") or {}), "num_layers": arch.num_layers,
                            "intermediate_size": arch.intermediate_size}
        if arch.extractor == self.base_value("extractor"):
            extractor = OmegaConf.to_container(self.config.extractor, resolve=True)
        else:
            path = ROOT_DIR / "conf" / "extractor" / f"{arch.extractor}.yaml"
            if not path.is_file():
                raise ValueError(f"extractor {arch.extractor!r}: no {path}")
            extractor = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        labels = OmegaConf.to_container(self.config.data.labels, resolve=True)
        names = list(labels["names"])
        label_set = {"names": names, "gains": labels.get("gains") or [0] * len(names),
                     "values": list(range(len(names)))[::-1], "relevant_up_to": labels.get("relevant_up_to", 0)}
        perspectives = list(OmegaConf.select(self.config, "perspectives", default=None) or ["p"])
        return RelevanceStudent(encoder, extractor, label_set, perspectives).eval()

    # ------------------------------------------------------------------------------ the sweeper
    def prepare(self, distributions: Mapping[str, Any], config: DictConfig, sweep_dir: str | Path | None = None):
        """Time every architecture of the search space that the latency table lacks."""
        self.config, self.distributions = config, dict(distributions)
        choices = {}
        for field in ARCH_FIELDS:
            key = self.keys.get(field)
            if key in self.distributions:
                values = finite_values(self.distributions[key])
                if values is None:
                    raise ValueError(f"{key}: an architecture key must be a finite sweep (a,b,c or range(...))")
                choices[field] = values
            else:
                choices[field] = [None]
        reference_model = self.build(Architecture(None, None, int(self.base_value("max_length")),
                                                  self.base_value("extractor")))
        enc = reference_model.encoder.config
        self.full = (int(enc.num_hidden_layers), int(enc.intermediate_size))
        self.reference = self.architecture({})
        del reference_model
        archs = []
        for layers in choices["num_layers"]:
            for ffn in choices["intermediate_size"]:
                for length in choices["max_length"]:
                    for ext in choices["extractor"]:
                        params = {self.keys[f]: v for f, v in zip(ARCH_FIELDS, (layers, ffn, length, ext))
                                  if v is not None}
                        archs.append(self.architecture(params))
        self.archs = list(dict.fromkeys(archs))
        self.table = LatencyTable(self._table_file())
        t = self.timing
        added = self.table.measure([self.reference, *archs], self.reference, self.build, t["runtime"], t["threads"],
                                   self.batch_sizes, t["iterations"], t["rounds"], t["warmup"], t["group_size"])
        log.info("latency table %s: %d architectures, %d timed now, %d reused", self.table.path, len(set(archs)),
                 added, len(set(archs)) * len(self.batch_sizes) - added)
        if not self.feasible_architectures():
            raise ValueError(f"no architecture of the search space is within the latency budget "
                             f"({self.budget_ms} ms, ratio {self.budget_ratio}): see {self.table.path}")
        return self.table

    def n_feasible(self) -> int | None:
        """How many distinct architectures within the budget a study can try, when every swept key is
        an architecture key (after :meth:`prepare`); None when other keys are swept too (a learning
        rate, say: then a repeated architecture is a new configuration)."""
        if set(self.distributions) - set(self.keys.values()):
            return None
        return len(self.feasible_architectures())

    def feasible_architectures(self) -> list[Architecture]:
        """The search space's distinct architectures within the latency budget (after :meth:`prepare`)."""
        return [a for a in self.archs if self._within_budget(a)]

    def _table_file(self) -> Path | None:
        if self.table_path:
            return Path(self.table_path)
        if not self.table_dir:
            return None
        student = OmegaConf.to_container(self.config.student, resolve=True)
        identity = {k: student.get(k) for k in ("name_or_path", "config", "pooling")}
        identity["prune"] = {k: (student.get("prune") or {}).get(k) for k in ("layer_selection", "importance")}
        identity["classes"] = len(OmegaConf.select(self.config, "data.labels.names"))
        identity["perspectives"] = len(OmegaConf.select(self.config, "perspectives", default=None) or [1])
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return Path(self.table_dir) / f"{self.timing['runtime']}-{digest}.csv"

    def latency(self, params: Mapping[str, Any], batch: int | None = None) -> dict:
        """The latency table's row of a configuration (``latency_ms``, ``ratio``, ``params``, ...)."""
        if self.table is None:
            raise RuntimeError("ArchitectureSearch.prepare() first")
        arch = self.architecture(params)
        row = self.table.get(arch, self.timing["runtime"], self.timing["threads"], batch or self.budget_batch)
        if row is None:
            raise KeyError(f"{arch.name} is not in the latency table {self.table.path}")
        return row

    def _within_budget(self, arch: Architecture) -> bool:
        row = self.table.get(arch, self.timing["runtime"], self.timing["threads"], self.budget_batch)
        if row is None:
            return False
        if self.budget_ms is not None and float(row["latency_ms"]) > self.budget_ms:
            return False
        return self.budget_ratio is None or float(row["ratio"]) <= self.budget_ratio

    def is_feasible(self, params: Mapping[str, Any]) -> bool:
        """Whether a configuration's architecture is within the latency budget."""
        return self._within_budget(self.architecture(params))

    def trial_attrs(self, params: Mapping[str, Any]) -> dict:
        """What the sweeper records on a trial: the architecture, its latency and parameters."""
        row, arch = self.latency(params), self.architecture(params)
        return {"architecture": arch.name, "latency_ms": float(row["latency_ms"]), "latency_ratio": float(row["ratio"]),
                "inference_params": int(row["params"])}

    def objectives(self, params: Mapping[str, Any], values: list[float], n_directions: int) -> list[float]:
        """The job's values, with the latency (ms) appended when the study has one more direction."""
        if n_directions == len(values) + 1:
            return [*values, float(self.latency(params)["latency_ms"])]
        return list(values)

    def write_report(self, study, sweep_dir: str | Path, sampler=None) -> dict:
        from lrkd.search.report import write_report  # lazy: the serving stack, at the sweep's end

        return write_report(self, study, Path(sweep_dir), sampler)


__all__ = ["ArchitectureSearch", "DEFAULT_ARCHITECTURE"]
