"""One schema for judged (query, item) pairs, and the ordered label set.

A dataset is a ``pandas.DataFrame`` with the columns

    query_id : str     stable id of the query (pairs are split by it)
    query    : str     the search query, non-empty
    item_id  : str     stable id of the item
    item_title : str   non-empty
    <text fields>      further item text columns (brand, description, attributes, ...), str, may be ""
    label    : int     class index into ``LabelSet.names`` (0 = most relevant); -1 = unlabelled
    relevance: float   optional raw numeric relevance (e.g. Home Depot's 1.0-3.0 mean); NaN if absent

plus the DataFrame attribute ``df.attrs["text_fields"]``: the ordered list of further text columns.
Class index ``i`` of every model output means grade ``LabelSet.names[i]``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

REQUIRED_COLUMNS = ("query_id", "query", "item_id", "item_title", "label")
UNLABELLED = -1


class DataError(ValueError):
    """Bad input data. The message names the file, the row (1-based line in the file) and column."""

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None,
                 column: str | None = None):
        where = []
        if path is not None:
            where.append(f"file {path}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)
        self.path, self.row, self.column = path, row, column


@dataclass(frozen=True)
class LabelSet:
    """Ordered relevance grades, most relevant first.

    names:  grade names, e.g. ("exact", "partial", "irrelevant"); class index i <-> names[i].
    gains:  gain per grade for ranking metrics (nDCG), same order; default C-1, ..., 0.
    values: numeric relevance per grade for RMSE of expected relevance (e.g. Home Depot 1.0-3.0);
            default = gains.
    relevant_up_to: index of the least relevant grade still counted "relevant" for ROC-AUC
            (classes 0..relevant_up_to are positive). Default 0.
    """

    names: tuple[str, ...]
    gains: tuple[float, ...] = ()
    values: tuple[float, ...] = ()
    relevant_up_to: int = 0

    def __post_init__(self):
        names = tuple(str(n) for n in self.names)
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"a label set needs >= 2 distinct grade names, got {names}")
        object.__setattr__(self, "names", names)
        c = len(names)
        gains = tuple(float(g) for g in self.gains) or tuple(float(c - 1 - i) for i in range(c))
        values = tuple(float(v) for v in self.values) or gains
        if len(gains) != c or len(values) != c:
            raise ValueError(f"gains/values need {c} entries (one per grade), got {gains} / {values}")
        if not 0 <= self.relevant_up_to < c - 1:
            raise ValueError(f"relevant_up_to must be in [0, {c - 2}], got {self.relevant_up_to}")
        object.__setattr__(self, "gains", gains)
        object.__setattr__(self, "values", values)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        try:
            return self.names.index(str(name))
        except ValueError:
            raise KeyError(f"{name!r} is not a grade of {self.names}") from None

    def to_dict(self) -> dict:
        """Plain, JSON-able form; ``LabelSet.from_config(ls.to_dict()) == ls``."""
        return {"names": list(self.names), "gains": list(self.gains), "values": list(self.values),
                "relevant_up_to": int(self.relevant_up_to)}

    @classmethod
    def from_config(cls, cfg) -> "LabelSet":
        """From a mapping with keys names, gains?, values?, relevant_up_to?."""
        get = (lambda k, d=None: cfg.get(k, d)) if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
        return cls(names=tuple(get("names")), gains=tuple(get("gains") or ()),
                   values=tuple(get("values") or ()), relevant_up_to=int(get("relevant_up_to", 0) or 0))

    def expected(self, probs: np.ndarray, what: str = "gains") -> np.ndarray:
        """Expected gain (or value) of class probabilities [N, C] -> [N]."""
        return np.asarray(probs) @ np.asarray(getattr(self, what))


@dataclass(frozen=True)
class DataSpec:
    """What the model side needs to know about the data, fixed after ``DataModule.setup``.

    label_set:     the grades.
    perspectives:  perspective names, in the order of the extractor's outputs and the artefact's
                   latent targets (K = len(perspectives)).
    latent_dim:    D, the dimension of the teacher's latent targets (0 when there is no artefact).
    has_annotations: whether a teacher artefact is attached.
    has_relevance: whether the dataset keeps a raw numeric relevance (RMSE is computed then).
    """

    label_set: LabelSet
    perspectives: tuple[str, ...] = ("user_intent", "structured_analysis", "business_rules")
    latent_dim: int = 0
    has_annotations: bool = False
    has_relevance: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.label_set.num_classes

    @property
    def num_perspectives(self) -> int:
        return len(self.perspectives)

    def to_dict(self) -> dict:
        """Plain, JSON-able form (stored in checkpoints' hyper-parameters)."""
        return {"label_set": self.label_set.to_dict(),
                "perspectives": list(self.perspectives), "latent_dim": int(self.latent_dim),
                "has_annotations": bool(self.has_annotations), "has_relevance": bool(self.has_relevance)}

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        return cls(label_set=LabelSet.from_config(d["label_set"]), perspectives=tuple(d["perspectives"]),
                   latent_dim=int(d.get("latent_dim", 0)), has_annotations=bool(d.get("has_annotations")),
                   has_relevance=bool(d.get("has_relevance")))


def text_fields(df) -> list[str]:
    """The ordered further item-text columns of a schema DataFrame."""
    return list(df.attrs.get("text_fields", []))


def dataset_fingerprint(df) -> str:
    """sha256 hex of a dataset's content: the schema columns (ids, texts, labels, relevance) in row
    order. Stable across processes and library versions; keys caches and the teacher artefact."""
    cols = list(REQUIRED_COLUMNS) + text_fields(df) + (["relevance"] if "relevance" in df.columns else [])
    h = hashlib.sha256()
    h.update(json.dumps(cols).encode())
    for col in cols:
        values = df[col].tolist()
        if col in ("label",):
            values = [int(v) for v in values]
        elif col == "relevance":
            values = [None if v != v else round(float(v), 6) for v in values]  # NaN -> None
        else:
            values = [str(v) for v in values]
        h.update(json.dumps(values, ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()


__all__ = ["UNLABELLED", "REQUIRED_COLUMNS", "DataError", "LabelSet", "DataSpec", "text_fields",
           "dataset_fingerprint"]
