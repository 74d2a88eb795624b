"""The pairs of one split as a torch Dataset (:class:`PairDataset`) and their collation into the batch
dict of :mod:`lrkd.data.batch` (:class:`PairCollator`)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from lrkd.data.batch import AUG_PREFIX
from lrkd.data.encode import pad_sequences
from lrkd.data.tokenize import TokenizedView


class PairDataset(Dataset):
    """The pairs of one split. Item j is dataset row ``rows[j]``.

    tokens:      standard view of ALL rows of the dataset (indexed by row).
    labels, relevance, query_index: [N_all] per-row arrays.
    annotations: optional {"annotated" [N_all] bool, "has_rationale" [N_all] bool, "teacher_probs"
                 [N_all, C] float32, "latent_targets" [N_all, K, D] float32} (indexed by row).
    aug_tokens:  optional augmented view of THIS split's pairs (indexed by j, not by row).
    """

    def __init__(self, rows: np.ndarray, tokens: TokenizedView, labels: np.ndarray, relevance: np.ndarray,
                 query_index: np.ndarray, annotations: Mapping[str, np.ndarray] | None = None,
                 aug_tokens: TokenizedView | None = None):
        self.rows = np.asarray(rows, dtype=np.int64)
        self.tokens, self.labels, self.relevance, self.query_index = tokens, labels, relevance, query_index
        self.annotations = dict(annotations) if annotations is not None else None
        if aug_tokens is not None and len(aug_tokens) != len(self.rows):
            raise ValueError(f"augmented view has {len(aug_tokens)} sequences for {len(self.rows)} pairs")
        self.aug_tokens = aug_tokens

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> dict[str, Any]:
        row = int(self.rows[j])
        ids, types = self.tokens[row]
        item = {"input_ids": ids, "token_type_ids": types, "labels": int(self.labels[row]),
                "relevance": float(self.relevance[row]), "query_index": int(self.query_index[row]),
                "pair_index": row}
        if self.annotations is not None:
            for key, values in self.annotations.items():
                item[key] = values[row]
        if self.aug_tokens is not None:
            item["aug_input_ids"], item["aug_token_type_ids"] = self.aug_tokens[j]
        return item


class PairCollator:
    """Items of :class:`PairDataset` -> the batch dict of :mod:`lrkd.data.batch`, padded to the
    longest sequence of the batch (``pad_id`` for ids, 0 for types and mask)."""

    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def _view(self, items, prefix: str) -> dict[str, torch.Tensor]:
        ids, mask = pad_sequences([it[prefix + "input_ids"] for it in items], self.pad_id)
        types, _ = pad_sequences([it[prefix + "token_type_ids"] for it in items], 0)
        return {prefix + "input_ids": ids, prefix + "attention_mask": mask, prefix + "token_type_ids": types}

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self._view(items, "")
        batch["labels"] = torch.tensor([it["labels"] for it in items], dtype=torch.long)
        batch["relevance"] = torch.tensor([it["relevance"] for it in items], dtype=torch.float32)
        batch["query_index"] = torch.tensor([it["query_index"] for it in items], dtype=torch.long)
        batch["pair_index"] = torch.tensor([it["pair_index"] for it in items], dtype=torch.long)
        first = items[0] if items else {}
        if "annotated" in first:
            batch["annotated"] = torch.tensor(np.array([it["annotated"] for it in items], dtype=bool))
            if "has_rationale" in first:
                batch["has_rationale"] = torch.tensor(np.array([it["has_rationale"] for it in items], dtype=bool))
            batch["teacher_probs"] = torch.from_numpy(np.stack([it["teacher_probs"] for it in items]).astype(np.float32))
            batch["latent_targets"] = torch.from_numpy(np.stack([it["latent_targets"] for it in items]).astype(np.float32))
        if AUG_PREFIX + "input_ids" in first:
            batch.update(self._view(items, AUG_PREFIX))
        return batch


# ------------------------------------------------------------------------------------ data module


__all__ = ["PairDataset", "PairCollator"]
