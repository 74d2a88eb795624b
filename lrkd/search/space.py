"""A search space of Optuna distributions (``{config key: distribution}``, as lrkd's sweeper builds it
from ``hydra.sweeper.params``) as candidates a predictor can score:

- :func:`grid` lists every configuration when each distribution is finite (categorical, or an int /
  float range with a step) and there are at most ``limit``; else None.
- :func:`sample_candidates` draws configurations at random (any distribution).
- :func:`encode` turns a configuration into a feature vector [F]: a number per numeric key (the log
  of it on a log scale; categorical choices that all read as numbers count as numbers), a one-hot
  block per other categorical key; keys in sorted order.
- :func:`config_key` is a hashable identity of a configuration (what "seen" means).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


def as_number(value: Any) -> float | None:
    """``value`` as a float when it is a number or a string that reads as one; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def is_numeric_choice(dist: CategoricalDistribution) -> bool:
    return all(as_number(c) is not None for c in dist.choices)


def finite_values(dist: BaseDistribution) -> list | None:
    """Every value ``dist`` can take, or None when there are infinitely many."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    if isinstance(dist, FloatDistribution) and dist.step is not None:
        n = int(round((dist.high - dist.low) / dist.step))
        return [dist.low + i * dist.step for i in range(n + 1)]
    return None


def grid(distributions: Mapping[str, BaseDistribution], limit: int = 20000) -> list[dict] | None:
    """Every configuration of a finite space (at most ``limit``), else None."""
    values = {k: finite_values(d) for k, d in distributions.items()}
    if any(v is None for v in values.values()):
        return None
    if math.prod(len(v) for v in values.values()) > limit:
        return None
    keys = list(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))]


def sample_value(dist: BaseDistribution, rng: np.random.Generator) -> Any:
    """One value of ``dist`` drawn uniformly (log-uniformly on a log scale)."""
    values = finite_values(dist)
    if values is not None:
        return values[int(rng.integers(len(values)))]
    low, high = float(dist.low), float(dist.high)
    x = math.exp(rng.uniform(math.log(low), math.log(high))) if dist.log else rng.uniform(low, high)
    return int(round(x)) if isinstance(dist, IntDistribution) else float(x)


def sample_candidates(distributions: Mapping[str, BaseDistribution], rng: np.random.Generator, n: int) -> list[dict]:
    return [{k: sample_value(d, rng) for k, d in distributions.items()} for _ in range(n)]


def encode(params: Mapping[str, Any], distributions: Mapping[str, BaseDistribution]) -> np.ndarray:
    """Feature vector [F] of one configuration (see the module docstring)."""
    out: list[float] = []
    for key in sorted(distributions):
        dist, value = distributions[key], params[key]
        if isinstance(dist, CategoricalDistribution) and not is_numeric_choice(dist):
            out += [1.0 if value == c else 0.0 for c in dist.choices]
            continue
        x = as_number(value)
        if x is None:
            raise ValueError(f"{key}: {value!r} is not a number")
        log = isinstance(dist, (FloatDistribution, IntDistribution)) and dist.log
        out.append(math.log(x) if log else x)
    return np.asarray(out, dtype=np.float64)


def encode_many(configs, distributions) -> np.ndarray:
    """[N, F] features of ``configs``."""
    return np.stack([encode(c, distributions) for c in configs]) if configs else np.zeros((0, 0))


def config_key(params: Mapping[str, Any]) -> tuple:
    """A hashable identity of a configuration (numbers compared as floats: "3" == 3)."""
    def norm(v):
        x = as_number(v)
        return ("n", x) if x is not None else ("s", str(v))

    return tuple(sorted((k, norm(v)) for k, v in params.items()))


__all__ = ["grid", "sample_candidates", "sample_value", "encode", "encode_many", "config_key", "finite_values",
           "as_number", "is_numeric_choice"]
