"""``PredictorSampler``: an Optuna sampler guided by a non-neural quality predictor (arXiv 2309.09507).

Each trial it proposes one whole configuration (Optuna's "relative" sampling):

1. the candidates: every configuration of the search space when it is finite (lrkd.search.space.grid),
   else ``n_candidates`` random ones, less those already proposed (seen) and those ``feasible``
   rejects (e.g. over the latency budget);
2. while fewer than ``n_startup_trials`` trials have finished, a random candidate;
3. then a regressor (``random_forest`` or ``gradient_boosting`` of scikit-learn, or ``lightgbm``)
   is fitted on the encoded configurations of the finished trials -> their first objective, and
   the candidate it predicts best is proposed (its prediction is kept in ``predictions``).

The search space comes from :meth:`set_search_space` (lrkd's sweeper calls it with
``hydra.sweeper.params``' distributions and the architecture search's budget check) or, without it,
from the finished trials (Optuna's intersection search space, as TPE's multivariate mode does).
When every feasible configuration has been tried, it proposes a seen one (with a warning).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from lrkd.search.space import config_key, encode_many, grid, sample_candidates

log = logging.getLogger(__name__)

REGRESSORS = ("random_forest", "gradient_boosting", "lightgbm")


def make_regressor(kind: str = "random_forest", n_estimators: int = 200, seed: int | None = 0):
    """A fresh scikit-learn-style regressor (``fit(X, y)``, ``predict(X)``) of ``kind`` (each library is
    imported when its regressor is asked for: scikit-learn is slow to import, lightgbm optional)."""
    if kind == "random_forest":
        from sklearn.ensemble import RandomForestRegressor

        return RandomForestRegressor(n_estimators=n_estimators, min_samples_leaf=1, random_state=seed, n_jobs=1)
    if kind == "gradient_boosting":
        from sklearn.ensemble import GradientBoostingRegressor

        return GradientBoostingRegressor(n_estimators=n_estimators, max_depth=2, learning_rate=0.05,
                                         subsample=0.8, random_state=seed)
    if kind == "lightgbm":
        try:
            import lightgbm
        except ImportError:
            raise ImportError("regressor lightgbm needs `pip install lightgbm` (or use random_forest)") from None
        return lightgbm.LGBMRegressor(n_estimators=n_estimators, min_child_samples=1, random_state=seed, verbose=-1)
    raise ValueError(f"regressor {kind!r} is not one of {REGRESSORS}")


class PredictorSampler(BaseSampler):
    """See the module docstring.

    seed:             seeds the random start-up, the candidate draws and the regressor.
    n_startup_trials: finished trials before the predictor takes over (>= 2).
    regressor:        ``random_forest`` | ``gradient_boosting`` | ``lightgbm``; n_estimators: its trees.
    n_candidates:     random candidates per trial when the space is not a small finite grid.
    max_grid:         the largest grid enumerated.
    """

    def __init__(self, seed: int | None = None, n_startup_trials: int = 4, regressor: str = "random_forest",
                 n_estimators: int = 200, n_candidates: int = 512, max_grid: int = 20000,
                 search_space: Mapping[str, BaseDistribution] | None = None,
                 feasible: Callable[[dict], bool] | None = None):
        if int(n_startup_trials) < 2:
            raise ValueError(f"n_startup_trials must be >= 2 (a predictor needs some trials), got {n_startup_trials}")
        if regressor not in REGRESSORS:
            raise ValueError(f"regressor {regressor!r} is not one of {REGRESSORS}")
        self.seed, self.n_startup_trials = seed, int(n_startup_trials)
        self.regressor, self.n_estimators = regressor, int(n_estimators)
        self.n_candidates, self.max_grid = int(n_candidates), int(max_grid)
        self._rng = np.random.default_rng(seed)
        self._random = RandomSampler(seed=seed)
        self._space: dict[str, BaseDistribution] | None = None
        self._grid: list[dict] | None = None
        self._feasible = feasible
        self._intersection = IntersectionSearchSpace()
        self.predictions: dict[int, float] = {}   # trial number -> predicted first objective
        if search_space is not None:
            self.set_search_space(search_space, feasible)

    def set_search_space(self, distributions: Mapping[str, BaseDistribution],
                         feasible: Callable[[dict], bool] | None = None) -> None:
        """Fix the search space (and the feasibility check) before the first trial."""
        self._space = dict(distributions)
        self._grid = grid(self._space, self.max_grid)
        if feasible is not None:
            self._feasible = feasible

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._random.reseed_rng()

    # ------------------------------------------------------------------------------ Optuna API
    def infer_relative_search_space(self, study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if self._space is not None:
            return dict(self._space)
        return self._intersection.calculate(study)

    def sample_independent(self, study, trial: FrozenTrial, param_name: str, param_distribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def sample_relative(self, study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict:
        if not search_space:
            return {}
        trials = study.get_trials(deepcopy=False)
        seen = {config_key({k: t.params[k] for k in search_space if k in t.params})
                for t in trials if t.number != trial.number and set(search_space) <= set(t.params)}
        candidates = self._candidates(search_space, seen)
        if not candidates:
            log.warning("every feasible configuration has been tried: proposing a seen one")
            candidates = self._candidates(search_space, set())
            if not candidates:
                raise ValueError("no configuration of the search space is feasible (the latency budget is below "
                                 "every architecture's latency?)")
        done = [t for t in trials if t.state == TrialState.COMPLETE and set(search_space) <= set(t.params)]
        if len(done) < self.n_startup_trials:
            return candidates[int(self._rng.integers(len(candidates)))]
        sign = -1.0 if study.directions[0] == StudyDirection.MINIMIZE else 1.0
        x = encode_many([{k: t.params[k] for k in search_space} for t in done], search_space)
        y = np.asarray([t.values[0] for t in done], dtype=np.float64)
        model = make_regressor(self.regressor, self.n_estimators, seed=int(self._rng.integers(2**31)))
        model.fit(x, y)
        predicted = np.asarray(model.predict(encode_many(candidates, search_space)), dtype=np.float64)
        best = int(np.argmax(sign * predicted))
        self.predictions[trial.number] = float(predicted[best])
        return candidates[best]

    def _candidates(self, space: dict[str, BaseDistribution], seen: set) -> list[dict]:
        pool = self._grid if self._grid is not None and set(space) == set(self._space or {}) else None
        if pool is None:
            pool = grid(space, self.max_grid) or sample_candidates(space, self._rng, self.n_candidates)
        out, keys = [], set(seen)
        for c in pool:
            key = config_key(c)
            if key in keys or (self._feasible is not None and not self._feasible(c)):
                continue
            keys.add(key)
            out.append(c)
        return out


def loo_predictions(x: np.ndarray, y: np.ndarray, regressor: str = "random_forest", n_estimators: int = 200,
                    seed: int = 0) -> np.ndarray:
    """Leave-one-out predictions [N] of the regressor on features ``x`` [N, F] -> ``y`` [N]."""
    out = np.empty(len(y), dtype=np.float64)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        model = make_regressor(regressor, n_estimators, seed)
        model.fit(x[keep], y[keep])
        out[i] = float(model.predict(x[i:i + 1])[0])
    return out


def loo_rank_correlation(x: np.ndarray, y: np.ndarray, **kwargs) -> float:
    """Spearman rank correlation of the leave-one-out predictions with ``y`` (NaN under 4 points)."""
    from scipy.stats import spearmanr  # slow to import; only for the report's figure

    if len(y) < 4:
        return float("nan")
    return float(spearmanr(loo_predictions(x, y, **kwargs), y).statistic)


__all__ = ["PredictorSampler", "make_regressor", "loo_predictions", "loo_rank_correlation", "REGRESSORS"]
