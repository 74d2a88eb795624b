"""RelevanceDataModule: a schema dataset, split by query, tokenized once, served as contract batches.

``setup`` loads the source, splits it by query (:func:`lrkd.data.splits.split_by_query`), with a
``pool`` appends the unlabelled transfer pool of the train queries (:mod:`lrkd.data.pool`), tokenizes
the standard view of every pair into one cache entry (:mod:`lrkd.data.tokenize`), and, when a teacher
artefact is attached, aligns its annotations to the rows. Batches follow :mod:`lrkd.data.batch`.

Teacher outputs reach the TRAIN batches only (``annotated``, ``teacher_probs``, ``latent_targets``
and, with ``with_augmented_view``, the ``aug_*`` view); validation and test never see them.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Mapping, Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from lrkd import artefact as artefact_lib
from lrkd.data.budget import apply_gold_budget, gold_options
from lrkd.data.dataset import PairCollator, PairDataset
from lrkd.data.pool import cached_pool, pool_options
from lrkd.data.query_batches import make_query_group_loader, num_query_group_batches, sampler_options
from lrkd.data.sampler import EpochSeededSampler, eval_sampler, make_train_loader
from lrkd.schema import REQUIRED_COLUMNS, DataError, DataSpec, LabelSet, dataset_fingerprint
from lrkd.data.splits import split_from_config
from lrkd.data.tokenize import tokenize_augmented, tokenize_standard
from lrkd.data.transfer import append_transfer, transfer_options
from lrkd.encoders import resolve_model_path
from lrkd.utils import plain

log = logging.getLogger(__name__)

DEFAULT_PERSPECTIVES = ("user_intent", "structured_analysis", "business_rules")


def grade_mean_relevance(df: pd.DataFrame, rows: np.ndarray, label_set: LabelSet) -> tuple[float, ...]:
    """Mean raw ``relevance`` of the pairs of each grade among ``rows`` (typically the train split):
    the per-grade ``values`` of ``labels.values: auto``."""
    if "relevance" not in df.columns or not df["relevance"].notna().any():
        raise DataError("labels.values is 'auto' but the dataset has no numeric relevance (column 'relevance' "
                        "is absent or all NaN); give the values explicitly", column="relevance")
    part = df.iloc[rows]
    part = part[part["relevance"].notna() & (part["label"] >= 0)]
    means = part.groupby("label")["relevance"].mean()
    missing = [label_set.names[c] for c in range(label_set.num_classes) if c not in means.index]
    if missing:
        raise DataError(f"labels.values is 'auto' but grade(s) {missing} have no train pair with a relevance; "
                        "give the values explicitly", column="relevance")
    return tuple(float(means[c]) for c in range(label_set.num_classes))


class RelevanceDataModule(L.LightningDataModule):
    """Judged (query, item) pairs for the student, split by query.

    name:       dataset name (for logs).
    source:     an object with ``load(label_set, duplicates) -> schema DataFrame``, or a config node
                with ``_target_`` (instantiated with ``hydra.utils.instantiate``).
    labels:     mapping for ``LabelSet.from_config``; ``values: auto`` = the mean raw relevance of each
                grade on the train split.
    split:      {train, val, test: fraction of pairs, seed[, folds, fold]}: ``split_from_config``.
    gold:       the gold-label budget {fraction, seed, drop_unlabelled} (:mod:`lrkd.data.budget`).
    sampler:    ``shuffle`` or ``query_groups`` (with ``query_groups``: :mod:`lrkd.data.query_batches`).
    tokenizer:  hub id or local path (resolved with ``resolve_model_path``), or a loaded tokenizer.
    max_length: tokens of the standard view; aug_max_length: tokens of the augmented view, whose
                ``[CLS] q [SEP] p [SEP]`` prefix is the standard view (max_length tokens).
    annotations: directory of a teacher artefact (``lrkd.artefact``), or None.
    annotation_superset: the artefact may hold pairs this run does not (matched by (query_id, item_id);
                the dataset fingerprint is not checked).
    with_augmented_view: also serve ``aug_*`` keys on train batches (the ``crsd`` loss term).
    pool:       None (no pool), or {catalogue: <items file>, retriever: bm25 | minilm, k: 10, seed: 0,
                device: cpu}: after the split, each train query's top-k catalogue items not judged for it
                are appended as unlabelled rows (label -1) and join the train split
                (:func:`lrkd.data.pool.build_pool`; cached under ``<cache_dir>/pool``). Val and test keep
                exactly the rows they have without a pool; the fingerprint covers the pool rows.
    transfer:   None, or the transfer table of ``stage=teacher_queries`` (a path, or {path, catalogue}):
                its generated queries' pairs join the train split as unlabelled rows, after the pool
                (:func:`lrkd.data.transfer.append_transfer`); the fingerprint covers them.
    path, max_pairs: accepted so that configs can forward them to the source; unused here.

    After ``setup``: ``frame`` (the DataFrame, the pool rows last), ``splits`` (name -> row indices),
    ``pool_rows`` (positions of the pool rows, empty without a pool), ``gold_queries``, ``fingerprint``, ``spec``
    (:class:`DataSpec`), ``tokenizer`` (the loaded tokenizer), ``train_sampler``.
    """

    def __init__(self, name: str, source, labels: Mapping, split: Mapping, tokenizer, max_length: int,
                 aug_max_length: int = 320, batch_size: int = 32, eval_batch_size: int = 64,
                 num_workers: int = 0, cache_dir: str = ".cache", annotations: str | None = None,
                 annotation_strict_fingerprint: bool = True, perspectives: Sequence[str] = DEFAULT_PERSPECTIVES,
                 duplicates: str = "error", with_augmented_view: bool = False, seed: int = 42,
                 path: str | None = None, max_pairs: int | None = None, pool: Mapping | None = None,
                 gold: Mapping | None = None, sampler: str = "shuffle", query_groups: Mapping | None = None,
                 annotation_superset: bool = False, transfer: str | Mapping | None = None):
        super().__init__()
        if with_augmented_view and not annotations:
            raise ValueError(
                "with_augmented_view=True needs teacher rationales, but no annotation artefact is attached. "
                "The reasoning-augmented view [CLS] q [SEP] p [SEP] rationale [SEP] is read by the `crsd` loss "
                "term (contrastive reasoning self-distillation). Attach an artefact written by the teacher's "
                "annotation stage with data.annotations=<dir>, or drop the term with ~loss.terms.crsd.")
        self.name = name
        self.source = source
        self.labels = plain(labels)
        self.split = dict(plain(split) or {})
        self.tokenizer_name = tokenizer
        self.max_length = int(max_length)
        self.aug_max_length = int(aug_max_length)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.cache_dir = str(cache_dir)
        self.annotations = str(annotations) if annotations else None
        self.annotation_strict_fingerprint = bool(annotation_strict_fingerprint)
        self.perspectives = tuple(plain(perspectives))
        self.duplicates = duplicates
        self.with_augmented_view = bool(with_augmented_view)
        self.seed = int(seed)
        self.pool = pool_options(plain(pool))
        self.transfer = transfer_options(plain(transfer))
        self.gold = gold_options(plain(gold), default_seed=self.seed)
        self.sampler, self.query_groups = sampler_options(sampler, plain(query_groups))
        self.annotation_superset = bool(annotation_superset)
        if self.with_augmented_view and self.aug_max_length < self.max_length + 2:
            raise ValueError(f"aug_max_length={self.aug_max_length} must exceed max_length={self.max_length} "
                             "by >= 2 to leave room for a rationale")

        self.tokenizer = None
        self.frame: pd.DataFrame | None = None
        self.splits: dict[str, np.ndarray] = {}
        self.pool_rows: np.ndarray = np.empty(0, dtype=np.int64)
        self.transfer_rows: np.ndarray = np.empty(0, dtype=np.int64)
        self.gold_queries: list = []
        self.fingerprint: str | None = None
        self.label_set: LabelSet | None = None
        self.train_sampler: EpochSeededSampler | None = None
        self.cache_hits: dict[str, bool] = {}
        self._spec: DataSpec | None = None
        self._datasets: dict[str, PairDataset] = {}
        self._collate: PairCollator | None = None

    # ------------------------------------------------------------------------------------ setup
    def prepare_data(self) -> None:
        """Runs on one process per node before ``setup`` on all ranks: doing the setup here writes the
        token cache once, so that the other ranks' ``setup`` reads it instead of re-tokenizing."""
        self.setup("fit")

    def _build_source(self):
        source = self.source
        if isinstance(source, (DictConfig, Mapping)):
            if "_target_" not in source:
                raise ValueError(f"data source config needs a _target_ (a source class), got keys {list(source)}")
            source = instantiate(source)
        if not hasattr(source, "load"):
            raise TypeError(f"data source {source!r} has no load(label_set, duplicates) method")
        return source

    def _load_tokenizer(self):
        if not isinstance(self.tokenizer_name, (str, bytes)) and hasattr(self.tokenizer_name, "get_vocab"):
            return self.tokenizer_name
        return AutoTokenizer.from_pretrained(resolve_model_path(str(self.tokenizer_name)))

    def setup(self, stage: str | None = None) -> None:
        """Load, split, tokenize and align annotations. Idempotent: a second call does nothing."""
        if self.frame is not None:
            return
        label_cfg = dict(self.labels)
        auto_values = isinstance(label_cfg.get("values"), str)
        if auto_values and label_cfg["values"].strip().lower() != "auto":
            raise ValueError(f"labels.values must be a list or 'auto', got {label_cfg['values']!r}")
        label_set = LabelSet.from_config({**label_cfg, "values": None if auto_values else label_cfg.get("values")})

        df = self._build_source().load(label_set, duplicates=self.duplicates)
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            raise DataError(f"source {type(self.source).__name__} returned no column(s) {missing}", column=missing[0])
        df = df.reset_index(drop=True)
        fingerprint = dataset_fingerprint(df)

        splits = split_from_config(df["query_id"].tolist(), self.split, default_seed=self.seed)
        if len(splits["train"]) == 0:
            raise DataError(f"dataset {self.name!r}: the train split is empty ({len(df)} pairs, "
                            f"{df['query_id'].nunique()} queries)")
        train_queries = df["query_id"].iloc[splits["train"]].tolist()
        pool_rows = np.empty(0, dtype=np.int64)
        if self.pool is not None:
            df, splits, pool_rows, hit = self._append_pool(df, splits, fingerprint)
            self.cache_hits["pool"] = hit
            fingerprint = dataset_fingerprint(df)
        if self.transfer is not None:  # generated queries' pairs: train only, unlabelled
            df, splits, self.transfer_rows = append_transfer(df, splits, self.transfer)
            fingerprint = dataset_fingerprint(df)
        # the budget hides train grades (same rows, same texts): the fingerprint stays that of the pairs
        df, splits, self.gold_queries = apply_gold_budget(df, splits, self.gold, train_queries)
        if auto_values:  # from the gold train grades (pool and hidden rows are unlabelled)
            label_set = dataclasses.replace(label_set, values=grade_mean_relevance(df, splits["train"], label_set))
            log.info("labels.values auto (train means): %s", dict(zip(label_set.names, label_set.values)))

        tokenizer = self._load_tokenizer()
        tokens, self.cache_hits["standard"] = tokenize_standard(df, tokenizer, self.max_length, self.cache_dir,
                                                                fingerprint=fingerprint)
        labels = df["label"].to_numpy(dtype=np.int64)
        relevance = (df["relevance"].to_numpy(dtype=np.float32) if "relevance" in df.columns
                     else np.full(len(df), np.nan, dtype=np.float32))
        query_index = pd.factorize(df["query_id"])[0].astype(np.int64)

        perspectives, latent_dim, annotations, aug_tokens = self.perspectives, 0, None, None
        if self.annotations:
            annotations, perspectives, latent_dim, rationales = self._align_annotations(
                df, label_set, fingerprint)
            if self.with_augmented_view:
                train_rows = splits["train"]
                train_df = df.iloc[train_rows]
                train_rationales = [rationales[r] for r in train_rows]
                aug_tokens, self.cache_hits["augmented"] = tokenize_augmented(
                    train_df, train_rationales, tokenizer, self.aug_max_length, self.cache_dir,
                    item_max_length=self.max_length)

        common = dict(tokens=tokens, labels=labels, relevance=relevance, query_index=query_index)
        self._datasets = {
            "train": PairDataset(splits["train"], annotations=annotations, aug_tokens=aug_tokens, **common),
            "val": PairDataset(splits["val"], **common),
            "test": PairDataset(splits["test"], **common),
        }
        pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
        self._collate = PairCollator(pad_id)
        self._spec = DataSpec(label_set=label_set, perspectives=tuple(perspectives), latent_dim=int(latent_dim),
                              has_annotations=annotations is not None,
                              has_relevance=bool(np.isfinite(relevance).any()))
        self.tokenizer, self.label_set, self.splits, self.fingerprint = tokenizer, label_set, splits, fingerprint
        self.pool_rows = pool_rows
        self.frame = df
        log.info("data %s: %d pairs (%d of them the unlabelled pool), %d queries; split %s; caches hit %s",
                 self.name, len(df), len(pool_rows), int(query_index.max()) + 1,
                 {k: len(v) for k, v in splits.items()}, self.cache_hits)

    def _append_pool(self, df: pd.DataFrame, splits: dict[str, np.ndarray], fingerprint: str):
        """The frame with the pool of the train queries appended, the splits with the pool rows in
        train, the pool rows' positions, and whether the pool came from the cache."""
        pool, hit = cached_pool(df, splits["train"], self.pool, self.cache_dir, fingerprint)
        leaked = set(pool["query_id"]) - set(df["query_id"].iloc[splits["train"]])
        if leaked:  # build_pool pairs train queries only; this guards the invariant
            raise RuntimeError(f"the pool holds non-train queries {sorted(leaked)[:3]}")
        fields = list(df.attrs.get("text_fields", []))
        pool = pool.astype({c: df[c].dtype for c in pool.columns if c in df.columns})
        combined = pd.concat([df, pool], ignore_index=True)[list(df.columns)]
        combined.attrs["text_fields"] = fields
        rows = np.arange(len(df), len(combined), dtype=np.int64)
        splits = {**splits, "train": np.concatenate([splits["train"], rows])}
        log.info("pool %s (%s, k=%d): %d unlabelled pairs for %d train queries", self.pool["catalogue"],
                 self.pool["retriever"], self.pool["k"], len(rows), pool["query_id"].nunique())
        return combined, splits, rows, hit

    def _align_annotations(self, df, label_set: LabelSet, fingerprint: str):
        """Load, validate and align the artefact (``lrkd.artefact``): (arrays by row, perspectives,
        latent dim D, rationale text by row, "" where a row is not annotated)."""
        ann = artefact_lib.load_artefact(self.annotations)
        ann.validate(df, perspectives=list(self.perspectives), label_names=list(label_set.names),
                     dataset_fingerprint=fingerprint, strict_fingerprint=self.annotation_strict_fingerprint,
                     superset=self.annotation_superset)
        aligned = ann.align(df)  # uniform soft labels and zero latents where a row is not annotated
        perspectives = tuple(ann.perspectives)
        annotated = np.asarray(aligned.annotated, dtype=bool)
        log.info("artefact %s annotates %d of the %d rows", self.annotations, int(annotated.sum()), len(df))
        rationales = [artefact_lib.format_rationales(aligned.rationales[i], perspectives) if annotated[i] else ""
                      for i in range(len(df))]
        # an annotated row may carry no rationale (a teacher that wrote rationales for a subset only):
        # the reasoning-augmented view and the terms that read it skip such rows
        has_rationale = annotated & np.array([any(str(t).strip() for t in aligned.rationales[i].values())
                                              if annotated[i] else False for i in range(len(df))], dtype=bool)
        arrays = {"annotated": annotated, "has_rationale": has_rationale,
                  "teacher_probs": np.asarray(aligned.soft_labels, dtype=np.float32),
                  "latent_targets": np.asarray(aligned.latents, dtype=np.float32)}
        return arrays, perspectives, int(ann.manifest.vector_dim), rationales

    # ----------------------------------------------------------------------------- properties
    def _require_setup(self) -> None:
        if self.frame is None:
            raise RuntimeError("RelevanceDataModule.setup() has not been called yet")

    @property
    def spec(self) -> DataSpec:
        self._require_setup()
        return self._spec

    def class_counts(self, split: str = "train") -> list[int]:
        """[C] gold label counts of ``split`` (unlabelled pool rows, label -1, not counted), in
        label-set order: what ``class_weight: balanced`` loss terms are computed from."""
        self._require_setup()
        labels = self.frame["label"].to_numpy()[self.splits[split]].astype(np.int64)
        return np.bincount(labels[labels >= 0], minlength=self._spec.num_classes).tolist()

    def dataset(self, split: str) -> PairDataset:
        """The :class:`PairDataset` of ``split`` ("train", "val" or "test")."""
        self._require_setup()
        return self._datasets[split]

    @property
    def num_train_batches(self) -> int:
        """Optimizer steps per epoch before gradient accumulation, per process (each DDP rank sees
        ceil(N / world_size) pairs)."""
        self._require_setup()
        trainer = getattr(self, "trainer", None)
        world = max(int(getattr(trainer, "world_size", 1) or 1), 1) if trainer is not None else 1
        if self.sampler == "query_groups":
            return num_query_group_batches(self._datasets["train"], self.query_groups)
        return math.ceil(math.ceil(len(self._datasets["train"]) / world) / self.batch_size)

    # ---------------------------------------------------------------------------- dataloaders
    def _loader(self, split: str, batch_size: int, sampler=None) -> DataLoader:
        if sampler is None and split != "train":  # several ranks: each row evaluated once (no padding)
            sampler = eval_sampler(self.dataset(split), getattr(self, "trainer", None))
        return DataLoader(self.dataset(split), batch_size=batch_size, sampler=sampler, shuffle=False,
                          drop_last=False, num_workers=self.num_workers, collate_fn=self._collate,
                          persistent_workers=self.num_workers > 0)

    def ordered_loader(self, split: str, batch_size: int | None = None) -> DataLoader:
        """Every row of ``split`` once, in order, unshuffled (e.g. to label a split with a model)."""
        dataset = self.dataset(split)
        return self._loader(split, int(batch_size or self.eval_batch_size),
                            sampler=torch.utils.data.SequentialSampler(dataset))

    def train_dataloader(self) -> DataLoader:
        common = dict(collate_fn=self._collate, seed=self.seed, trainer=self.trainer, num_workers=self.num_workers)
        if self.sampler == "query_groups":
            loader = make_query_group_loader(self.dataset("train"), options=self.query_groups, **common)
            self.train_sampler = loader.batch_sampler
        else:
            loader = make_train_loader(self.dataset("train"), batch_size=self.batch_size, **common)
            self.train_sampler = loader.sampler
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
