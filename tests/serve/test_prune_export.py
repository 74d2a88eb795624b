"""A pruned student exports to ONNX and scores as it does eagerly; predict reads its HF form."""
from __future__ import annotations

import numpy as np
import pytest

from lrkd.serve.config import ServingConfig
from lrkd.serve.scorers import OnnxScorer, TorchScorer, load_served
from tests.student.test_prune import MLP, batch, student


def test_pruned_student_onnx_scores_like_eager(tmp_path):
    pytest.importorskip("onnxruntime")
    from lrkd.serve.export import export_onnx

    pruned = student({"num_layers": 2, "layer_selection": "bottom", "intermediate_size": 12}, MLP)
    config = ServingConfig(label_set=pruned.label_set, tokenizer=pruned.tokenizer_name, max_length=16)
    path = export_onnx(pruned, tmp_path / "pruned.onnx", config)
    ids, mask, types = (t.numpy() for t in batch(2))
    eager = TorchScorer(pruned)(ids, mask, types)
    onnx = OnnxScorer(path)(ids, mask, types)
    np.testing.assert_allclose(onnx, eager, atol=1e-5)
    # the HF form loads the pruned shapes and scores the same
    pruned.save_pretrained(tmp_path / "hf", serving=config.to_dict())
    loaded, served = load_served(tmp_path / "hf")
    assert loaded.encoder.config.intermediate_size == 12 and served.max_length == 16
    np.testing.assert_array_equal(TorchScorer(loaded)(ids, mask, types), eager)
