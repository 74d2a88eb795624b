"""PredictorSampler on synthetic objectives: never over budget, never a seen configuration, and it finds a
planted optimum in fewer trials than random search on average over seeds; the replay and the report's
helpers (Pareto front, choice, leave-one-out rank correlation)."""
from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from lrkd.search.replay import compare, run_one
from lrkd.search.report import choose, pareto_front
from lrkd.search.sampler import PredictorSampler, loo_rank_correlation
from lrkd.search.space import config_key, encode, grid

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"layers": CategoricalDistribution(["1", "2", "3", "4", "5", "6"]),
         "ffn": CategoricalDistribution([128, 256, 512, 1024, 1536]),
         "extractor": CategoricalDistribution(["none", "mlp", "poly"])}


def quality(p):  # planted optimum: layers 4, ffn 256, mlp
    return -(int(p["layers"]) - 4) ** 2 - (np.log2(p["ffn"]) - 8) ** 2 + (0.5 if p["extractor"] == "mlp" else 0.0)


def cost(p):
    return int(p["layers"]) * p["ffn"] / 1536


def feasible(p):
    return cost(p) <= 2.5


def test_space_grid_and_encoding():
    assert len(grid(SPACE)) == 90 and grid({"lr": FloatDistribution(1e-5, 1e-3, log=True)}) is None
    assert len(grid({"n": IntDistribution(2, 8, step=2)})) == 4
    x = encode({"layers": "3", "ffn": 512, "extractor": "poly"}, SPACE)
    assert x.tolist() == [0.0, 0.0, 1.0, 512.0, 3.0]        # extractor one-hot, ffn, layers (sorted keys)
    assert config_key({"a": "3"}) == config_key({"a": 3})


def test_predictor_never_proposes_an_over_budget_or_seen_configuration():
    sampler = PredictorSampler(seed=3, n_startup_trials=3, n_estimators=30, search_space=SPACE, feasible=feasible)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    n_feasible = sum(feasible(c) for c in grid(SPACE))
    seen = set()
    for _ in range(n_feasible):
        trial = study.ask(SPACE)
        assert feasible(trial.params), trial.params
        assert config_key(trial.params) not in seen
        seen.add(config_key(trial.params))
        study.tell(trial, quality(trial.params))
    assert len(seen) == n_feasible                          # it exhausted the feasible grid without repeats
    assert set(sampler.predictions) == set(range(3, n_feasible))


def test_predictor_finds_a_planted_optimum_faster_than_random():
    best = max(quality(c) for c in grid(SPACE) if feasible(c))

    def trials_to_optimum(name, seed, cap=30):
        sampler = (PredictorSampler(seed=seed, n_startup_trials=4, n_estimators=30, search_space=SPACE,
                                    feasible=feasible) if name == "predictor" else optuna.samplers.RandomSampler(seed=seed))
        values, _ = run_one(SPACE, quality, feasible, sampler, cap)
        hits = [i for i, v in enumerate(values) if v == best]
        return hits[0] + 1 if hits else cap + 1

    predictor = np.mean([trials_to_optimum("predictor", s) for s in range(8)])
    random = np.mean([trials_to_optimum("random", s) for s in range(8)])
    assert predictor < random, (predictor, random)


def test_replay_compares_samplers_at_the_same_trial_count():
    best = max(quality(c) for c in grid(SPACE) if feasible(c))
    table = compare(SPACE, quality, feasible, best, samplers=("predictor", "random"), n_trials=5, seeds=3, startup=3)
    assert table.groupby("sampler")["trials"].max().to_dict() == {"predictor": 5, "random": 5}
    assert (table["regret_mean"] >= -1e-12).all() and (table["best_found_mean"] <= best + 1e-12).all()
    # best-so-far never decreases with more trials
    for _, group in table.groupby("sampler"):
        assert np.all(np.diff(group.sort_values("trials")["best_found_mean"]) >= -1e-12)


def test_pareto_front_and_choice():
    q = np.array([0.80, 0.79, 0.70, 0.81, 0.60])
    t = np.array([10.0, 5.0, 5.0, 20.0, 1.0])
    assert pareto_front(q, t).tolist() == [True, True, False, True, True]
    frame = pd.DataFrame({"quality": q, "latency_ms": t, "trial": range(5)})
    assert choose(frame, tolerance=0.0)["trial"] == 3                 # the best
    assert choose(frame, tolerance=0.03)["trial"] == 1                 # the fastest within 3 % of 0.81
    assert choose(frame.iloc[:0], 0.1) is None


def test_leave_one_out_rank_correlation():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (24, 2))
    assert loo_rank_correlation(x, 3 * x[:, 0] + 0.1 * x[:, 1], n_estimators=30) > 0.8
    assert abs(loo_rank_correlation(x, rng.normal(size=24), n_estimators=30)) < 0.6
    assert np.isnan(loo_rank_correlation(x[:3], x[:3, 0]))


def test_bad_sampler_settings():
    with pytest.raises(ValueError, match="n_startup_trials"):
        PredictorSampler(n_startup_trials=1)
    with pytest.raises(ValueError, match="regressor"):
        PredictorSampler(regressor="mlp")
    sampler = PredictorSampler(search_space=SPACE, feasible=lambda p: False)
    with pytest.raises(ValueError, match="no configuration of the search space is feasible"):
        optuna.create_study(sampler=sampler).ask(SPACE)
