"""ONNX export of the whole student: equal to PyTorch on other batch sizes and lengths; int8; CLI."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from lrkd.serve.config import ServingConfig, read_sidecar, sidecar_path
from lrkd.serve.export import ServingStudent, export_onnx, int8_path, quantize_int8
from lrkd.serve.scorers import OnnxScorer
from tests.serve import LABELS, MINILM, fit_and_save, tiny_student


def _config(module) -> ServingConfig:
    return ServingConfig.from_hparams(module.hparams)


def _random_inputs(batch: int, length: int, seed: int):
    """Random ids, a padded tail on every other row, two token-type segments."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 30000, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(0, batch, 2):
        mask[i, length // 2 + i % 3:] = 0
    types = torch.zeros(batch, length, dtype=torch.long)
    types[:, length // 3:] = 1
    return ids, mask, types


@pytest.fixture(scope="module", params=["none", "mlp", "poly", "gat"])
def exported(request, tmp_path_factory):
    module = tiny_student(request.param, seed=3)
    path = export_onnx(module, tmp_path_factory.mktemp(f"onnx_{request.param}") / "student.onnx", _config(module))
    return module, path


@pytest.mark.parametrize("batch,length", [(1, 9), (5, 9), (1, 57), (5, 57)])
def test_onnx_equals_pytorch_on_two_batch_sizes_and_lengths(exported, batch, length):
    module, path = exported
    ids, mask, types = _random_inputs(batch, length, seed=batch * 100 + length)
    with torch.no_grad():
        logits, probs = ServingStudent(module).eval()(ids, mask, types)
    out = OnnxScorer(path, threads=1).run(ids.numpy(), mask.numpy(), types.numpy())
    assert out["logits"].shape == (batch, 3) and out["probs"].shape == (batch, 3)
    np.testing.assert_allclose(out["logits"], logits.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(out["probs"], probs.numpy(), atol=1e-4, rtol=0)
    # the inputs matter (padding is honoured, rows differ): the comparison is not vacuous
    assert np.ptp(out["logits"], axis=0).max() > 1e-2 if batch > 1 else True


def test_graph_has_dynamic_batch_and_sequence_axes_and_a_sidecar(exported):
    module, path = exported
    graph = onnx.load(str(path)).graph
    for inp in graph.input:
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert dims == ["batch", "sequence"], (inp.name, dims)
    assert [o.name for o in graph.output] == ["logits", "probs"]
    meta = read_sidecar(path)
    assert meta["label_set"]["names"] == LABELS["names"] and meta["tokenizer"] == MINILM
    assert meta["max_length"] == 128 and meta["precision"] == "fp32"
    assert OnnxScorer(path).config == _config(module)
    # the graph holds the inference parameters (plus a few constants folded from them, e.g. GAT's W^T a)
    n_init = sum(int(np.prod(t.dims)) for t in graph.initializer)
    inference = module.parameter_counts()["inference"]
    assert inference * 0.99 <= n_init <= inference * 1.01


def test_padding_positions_do_not_change_the_onnx_output(exported):
    """Same pairs, padded to 20 or to 48 tokens: identical outputs (the mask is a real input)."""
    _, path = exported
    ids, mask, types = _random_inputs(3, 20, seed=7)
    mask[:] = 1
    mask[1, 12:] = 0
    pad = lambda x, v: np.concatenate([x.numpy(), np.full((3, 28), v, dtype=np.int64)], axis=1)
    scorer = OnnxScorer(path, threads=1)
    short = scorer(ids.numpy(), mask.numpy(), types.numpy())
    long = scorer(pad(ids, 0), pad(mask, 0), pad(types, 0))
    np.testing.assert_allclose(short, long, atol=1e-5)


def test_int8_runs_and_gives_a_distribution(tmp_path):
    module = tiny_student("gat", seed=4)
    fp32 = export_onnx(module, tmp_path / "s.onnx", _config(module))
    q = quantize_int8(fp32)
    assert q == int8_path(fp32) == tmp_path / "s.int8.onnx"
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}, ops
    assert json.loads(sidecar_path(q).read_text())["precision"] == "int8-dynamic"
    ids, mask, types = _random_inputs(4, 30, seed=1)
    probs = OnnxScorer(q)(ids.numpy(), mask.numpy(), types.numpy())
    assert probs.shape == (4, 3) and np.isfinite(probs).all() and (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


def test_export_cli_writes_fp32_int8_and_sidecars(tmp_path):
    from lrkd.cli import export as main

    ckpt = fit_and_save(tiny_student("poly", seed=5), tmp_path / "student.ckpt")
    out = tmp_path / "out" / "student.onnx"
    assert main(["--checkpoint", str(ckpt), "--output", str(out), "--int8", "--max-length", "64"]) == 0
    for p in (out, out.with_suffix(".json"), tmp_path / "out" / "student.int8.onnx",
              tmp_path / "out" / "student.int8.json"):
        assert p.exists(), p
    assert read_sidecar(out)["max_length"] == 64
    assert main(["--checkpoint", str(tmp_path / "missing.ckpt"), "--output", str(out)]) == 2
