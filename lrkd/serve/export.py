"""Export the served student (encoder, extractor, classifier) to ONNX, and int8 dynamic
quantization. (The ONNX Runtime scorer is :class:`lrkd.serve.scorers.OnnxScorer`; the int8 quality
cost on chorus_icecat is :func:`lrkd.serve.quality.quality_cost`.)

The exported graph is :class:`ServingStudent`:

    inputs   input_ids, attention_mask, token_type_ids   [batch, sequence] int64
    outputs  logits [batch, C] float32, probs [batch, C] float32 (softmax of logits)

with dynamic ``batch`` and ``sequence`` axes (TorchScript-based ``torch.onnx.export``, which
gives one dense graph). Training-only parts (the latent projection P_k, the loss) are not in it.
Beside ``model.onnx`` a sidecar ``model.json`` holds the :class:`ServingConfig` (label set,
tokenizer, max length, text fields, and a tuned decision rule with its fitted thresholds when the
student has one: lrkd.evaluation.decision), so predict can run from the ONNX file alone and decides as the test did.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from lrkd.data.batch import INPUT_KEYS
from lrkd.serve.config import OUTPUT_NAMES, ServingConfig, read_sidecar, sidecar_path, write_sidecar
from lrkd.utils import write_json_atomic

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17


class ServingStudent(nn.Module):
    """The student as one inference graph: (input_ids, attention_mask, token_type_ids) [B, L] int64
    -> (logits [B, C], probs [B, C]). ``student`` is anything with ``predict_logits`` (a
    RelevanceStudent, or the StudentModule that trains one)."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, input_ids, attention_mask, token_type_ids):
        logits = self.student.predict_logits(input_ids, attention_mask, token_type_ids)
        return logits, logits.softmax(dim=-1)


def int8_path(onnx_path: str | os.PathLike) -> Path:
    """``student.onnx`` -> ``student.int8.onnx``."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".int8" + p.suffix)


def _example_inputs(vocab_size: int) -> tuple[torch.Tensor, ...]:
    """Batch 2, length 16; row 1 padded from position 10 and token types 0 then 1, so the trace
    goes through the masked, two-segment path that serving uses."""
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, min(vocab_size, 1000), (2, 16), generator=g)
    attention_mask = torch.ones(2, 16, dtype=torch.long)
    attention_mask[1, 10:] = 0
    token_type_ids = torch.zeros(2, 16, dtype=torch.long)
    token_type_ids[:, 8:] = 1
    return input_ids, attention_mask, token_type_ids


def export_onnx(student: nn.Module, path: str | os.PathLike, config: ServingConfig,
                opset: int = DEFAULT_OPSET) -> Path:
    """Export ``student`` (in eval mode) to ``path``, check it with ``onnx.checker`` and write the
    sidecar JSON. Returns the ONNX path."""
    import onnx  # the serve extra

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = student.training
    student.eval()
    wrapper = ServingStudent(student).eval()
    encoder = getattr(student, "encoder", None)
    vocab = int(getattr(getattr(encoder, "config", None), "vocab_size", 0) or 1000)
    dynamic = {k: {0: "batch", 1: "sequence"} for k in INPUT_KEYS}
    dynamic.update({k: {0: "batch"} for k in OUTPUT_NAMES})
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(wrapper, _example_inputs(vocab), str(path), dynamo=False,
                              input_names=list(INPUT_KEYS), output_names=list(OUTPUT_NAMES),
                              dynamic_axes=dynamic, opset_version=opset, do_constant_folding=True)
    finally:
        student.train(was_training)
    onnx.checker.check_model(str(path))
    write_sidecar(path, config, precision="fp32", opset=opset)
    return path


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike | None = None,
                  per_channel: bool = True) -> Path:
    """int8 dynamic quantization (weights int8, activations quantized at run time) with
    ``onnxruntime.quantization.quantize_dynamic``; copies the sidecar. Returns the int8 path.

    per_channel: one weight scale per output channel (default). On chorus_icecat's test split (532
    pairs, a MiniLM student), one scale per tensor (ONNX Runtime's default) moved the probabilities
    by up to 0.55 and changed the argmax of 10.5 % of pairs; per channel, up to 0.24 and 3.8 %
    (benchmarks/README.md)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # the serve extra

    out = Path(out_path) if out_path is not None else int8_path(fp32_path)
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(max(quiet, logging.ERROR))  # the quantizer logs every tensor
    try:
        quantize_dynamic(model_input=str(fp32_path), model_output=str(out), weight_type=QuantType.QInt8,
                         per_channel=per_channel)
    finally:
        logging.getLogger().setLevel(quiet)
    meta = read_sidecar(fp32_path) if sidecar_path(fp32_path).exists() else None
    if meta is not None:
        meta.update(precision="int8-dynamic", per_channel=bool(per_channel))
        write_json_atomic(sidecar_path(out), meta)
    return out


__all__ = ["ServingStudent", "export_onnx", "quantize_int8", "int8_path", "DEFAULT_OPSET"]
