"""``OptunaSweeper``: a Hydra sweeper that runs an Optuna study, one trial per launched job.

Optuna is imported only when a sweep starts (Hydra imports every plugin module at start-up).
The sweep writes into ``hydra.sweep.dir``: ``multirun.yaml`` (the sweep's config),
``optimization_results.yaml`` (best trial; the counts of complete and failed trials) and
``trials.csv`` (every trial of the study: number, state, value, params, job number).

``search`` (optional, a ``_target_`` node; lrkd.search.study.ArchitectureSearch for
``hparams_search=student_arch``) is an object the sweeper consults around the trials: ``prepare``
before the first (the latency table), ``is_feasible`` per asked trial (one that is not is told as
failed and never launched, nor counted in ``n_trials``), ``trial_attrs`` and ``objectives`` per
finished job (the latency as a second objective), ``write_report`` at the end. A sampler with
``set_search_space`` (lrkd.search.sampler.PredictorSampler) is given the space and the feasibility
check before the first trial.
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"
TRIALS_FILE = "trials.csv"
MULTIRUN_FILE = "multirun.yaml"
MAX_ASKS_PER_TRIAL = 50   # asked trials per launched one, when a search rejects (over-budget) proposals


def distribution_from_override(override: Override) -> Any:
    """A Hydra sweep override -> an Optuna distribution.

    ``a,b,c`` / ``choice(a,b,c)`` -> Categorical of the values as written (strings);
    ``range(start, stop, step)`` -> Int (or Float) over exactly the values Hydra's range yields
    (the stop is excluded), ``shuffle(range(...))`` -> Categorical;
    ``interval(lo, hi)`` -> Float (Hydra parses an interval's ends as floats: search integers with
    ``range``), ``tag(log, interval(...))`` -> Float on a log scale.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    key = override.get_key_element()
    if override.is_choice_sweep():
        return CategoricalDistribution(list(override.sweep_string_iterator()))
    if override.is_range_sweep():
        sweep = override.value()
        assert isinstance(sweep, RangeSweep)
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError(f"{key}: {override.input_line!r} is an empty range")
        if sweep.shuffle:
            return CategoricalDistribution(list(override.sweep_string_iterator()))
        if all(isinstance(v, int) for v in values):
            return IntDistribution(min(values), max(values), step=abs(int(sweep.step)))
        return FloatDistribution(float(min(values)), float(max(values)), step=abs(float(sweep.step)))
    if override.is_interval_sweep():
        sweep = override.value()
        assert isinstance(sweep, IntervalSweep)
        return FloatDistribution(float(sweep.start), float(sweep.end), log="log" in sweep.tags)
    raise ValueError(f"{key}: {override.input_line!r} is not a sweep Optuna can search "
                     "(use a,b,c / choice(...) / range(...) / interval(...) / tag(log, interval(...)))")


@dataclass
class SearchSpace:
    """distributions: {override key: Optuna distribution}; fixed: override lines every trial gets."""

    distributions: dict[str, Any] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)

    @classmethod
    def from_overrides(cls, overrides: Sequence[Override]) -> "SearchSpace":
        """Sweep overrides become distributions, the others fixed lines; a later override of the
        same key replaces an earlier one (the command line wins over ``hydra.sweeper.params``)."""
        by_key: dict[str, Override] = {}
        for override in overrides:
            by_key.pop(override.get_key_element(), None)
            by_key[override.get_key_element()] = override
        space = cls()
        for key, override in by_key.items():
            if override.is_sweep_override():
                space.distributions[key] = distribution_from_override(override)
            elif override.is_delete() and override.value() is None:
                space.fixed.append(key)
            else:
                space.fixed.append(f"{key}={override.get_value_element_as_str()}")
        return space

    def job_overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The override lines of the job for one trial's ``params``."""
        return [*self.fixed, *(f"{key}={value}" for key, value in params.items())]


def trial_outcome(ret: JobReturn, n_objectives: int) -> tuple[list[float] | None, str]:
    """(values to tell, "") for a job that returned ``n_objectives`` finite numbers, else
    (None, why the trial failed)."""
    if ret.status != JobStatus.COMPLETED:
        error = getattr(ret, "_return_value", None)
        return None, f"the job raised {type(error).__name__}: {error}"
    value = ret.return_value
    if value is None:
        return None, ("the job returned None: it failed (see its error.json), or cfg.optimized_metric "
                      "names a metric the run did not log")
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) != n_objectives:
        return None, f"the job returned {len(values)} values for {n_objectives} directions"
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        return None, f"the job returned {value!r}, not a number"
    if not all(math.isfinite(v) for v in floats):
        return None, f"the job returned a non-finite value {floats}"
    return floats, ""


class OptunaSweeper(Sweeper):
    """Runs ``n_trials`` trials of an Optuna study, ``n_jobs`` at a time, through Hydra's launcher.
    See :class:`hydra_plugins.lrkd_optuna_sweeper.config.LrkdOptunaSweeperConf` for the arguments."""

    def __init__(self, direction: Any = "maximize", study_name: str | None = None, storage: str | None = None,
                 load_if_exists: bool = True, n_trials: int = 20, n_jobs: int = 1, sampler: Any = None,
                 params: Mapping[str, str] | None = None, search: Any = None) -> None:
        super().__init__()
        if isinstance(direction, str):
            self.directions = [direction]
        else:
            self.directions = [str(d) for d in direction]
        for d in self.directions:
            if d not in ("maximize", "minimize"):
                raise ValueError(f"hydra.sweeper.direction: {d!r} is not 'maximize' or 'minimize'")
        if int(n_trials) < 1 or int(n_jobs) < 1:
            raise ValueError(f"hydra.sweeper: n_trials ({n_trials}) and n_jobs ({n_jobs}) must be >= 1")
        self.study_name, self.storage, self.load_if_exists = study_name, storage, bool(load_if_exists)
        self.n_trials, self.n_jobs = int(n_trials), int(n_jobs)
        self.sampler_spec = sampler
        self.params = dict(params or {})
        self.search_spec = search
        self.search = None
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher = None
        self.study = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def _sampler(self) -> Any:
        """The configured sampler: a ``_target_`` node is instantiated, a sampler object kept."""
        spec = self.sampler_spec
        if spec is None:
            return None
        if isinstance(spec, (Mapping, DictConfig)) and "_target_" in spec:
            from hydra.utils import instantiate

            return instantiate(spec)
        return spec

    def _search(self) -> Any:
        """The configured search hooks (see the module docstring), or None."""
        spec = self.search_spec
        if spec is None or (isinstance(spec, (Mapping, DictConfig)) and not spec.get("_target_")):
            return None
        if isinstance(spec, (Mapping, DictConfig)):
            from hydra.utils import instantiate

            return instantiate(spec, _convert_="all")
        return spec

    def search_space(self, arguments: Sequence[str]) -> SearchSpace:
        """``hydra.sweeper.params``, then the command line's overrides."""
        loader = self.hydra_context.config_loader if self.hydra_context is not None else None
        lines = [f"{key}={value}" for key, value in self.params.items()] + list(arguments)
        space = SearchSpace.from_overrides(OverridesParser.create(config_loader=loader).parse_overrides(lines))
        if not space.distributions:
            raise ValueError("hydra.sweeper.params has nothing to search: give at least one key a sweep, "
                             "e.g. optimizer.lr='tag(log, interval(1e-5, 1e-3))'")
        return space

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        import optuna

        assert self.config is not None and self.launcher is not None, "setup() first"
        space = self.search_space(arguments)
        name = self.study_name or str(OmegaConf.select(self.config, "task_name", default="lrkd"))
        sampler = self._sampler()
        self.study = study = optuna.create_study(study_name=name, storage=self.storage, sampler=sampler,
                                                 directions=self.directions, load_if_exists=self.load_if_exists)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / MULTIRUN_FILE)
        self.search = search = self._search()
        feasible, n_trials = None, self.n_trials
        if search is not None:
            search.prepare(space.distributions, self.config, sweep_dir)
            feasible = search.is_feasible
            n_max = search.n_feasible() if hasattr(search, "n_feasible") else None
            if n_max is not None and n_max < n_trials:
                log.info("architecture search: %d trials asked, %d architectures within the budget: %d trials",
                         n_trials, n_max, n_max)
                n_trials = n_max
        if hasattr(sampler, "set_search_space"):
            sampler.set_search_space(space.distributions, feasible=feasible)
        log.info("Optuna study %r (%s), %d trials, search space: %s", name, "/".join(self.directions),
                 n_trials, space.distributions)

        returns: list[Sequence[JobReturn]] = []
        job, asked, max_asks = 0, 0, MAX_ASKS_PER_TRIAL * n_trials
        while job < n_trials and asked < max_asks:
            trials = []
            while len(trials) < min(self.n_jobs, n_trials - job) and asked < max_asks:
                trial = study.ask(space.distributions)
                asked += 1
                if feasible is not None and not feasible(trial.params):
                    trial.set_user_attr("fail_reason", "over the latency budget (not trained)")
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    continue
                trials.append(trial)
            if not trials:
                break
            batch = [space.job_overrides(t.params) for t in trials]
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=job)
            for offset, (trial, ret) in enumerate(zip(trials, results)):
                trial.set_user_attr("job_num", job + offset)
                if search is not None:
                    for key, value in search.trial_attrs(trial.params).items():
                        trial.set_user_attr(key, value)
                n_returned = len(self.directions) - (1 if search is not None and len(self.directions) > 1 else 0)
                values, why = trial_outcome(ret, n_returned)
                if values is not None and search is not None:
                    values = search.objectives(trial.params, values, len(self.directions))
                if values is None:
                    trial.set_user_attr("fail_reason", why)
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    log.warning("trial %d (job %d) failed: %s; the search goes on", trial.number, job + offset, why)
                else:
                    study.tell(trial, values)
                    log.info("trial %d (job %d): %s", trial.number, job + offset, values)
            job += len(trials)
            returns.append(results)
        if job < n_trials:
            log.warning("stopped after %d jobs: %d asked trials were over the latency budget", job, asked - job)
        self._write_results(sweep_dir, name)
        if search is not None:
            search.write_report(study, sweep_dir, sampler)
        return returns

    def _write_results(self, sweep_dir: Path, name: str) -> None:
        """``optimization_results.yaml`` and ``trials.csv`` in the sweep dir."""
        from optuna.trial import TrialState

        study = self.study
        trials = study.get_trials(deepcopy=False)
        summary: dict[str, Any] = {
            "name": "lrkd_optuna", "study_name": name, "directions": self.directions,
            "n_trials": len(trials),
            "n_complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "n_failed": sum(t.state == TrialState.FAIL for t in trials)}
        if summary["n_complete"] == 0:
            log.error("no trial of study %r completed: see the jobs' error.json in %s", name, sweep_dir)
        elif len(self.directions) == 1:
            best = study.best_trial
            summary.update(best_params=dict(best.params), best_value=float(best.value),
                           best_trial=best.number, best_job=best.user_attrs.get("job_num"))
            log.info("best trial %d (job %s): %s = %s", best.number, best.user_attrs.get("job_num"),
                     best.params, best.value)
        else:
            summary["best_trials"] = [{"trial": t.number, "job": t.user_attrs.get("job_num"),
                                       "params": dict(t.params), "values": list(t.values)}
                                      for t in study.best_trials]
        OmegaConf.save(OmegaConf.create(summary), sweep_dir / RESULTS_FILE)
        study.trials_dataframe().to_csv(sweep_dir / TRIALS_FILE, index=False)
