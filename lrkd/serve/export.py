"""Export the served student (encoder, extractor, classifier) to ONNX; int8 dynamic quantization;
an ONNX Runtime scorer; and the int8 quality cost on chorus_icecat.

The exported graph is :class:`ServingStudent`:

    inputs   input_ids, attention_mask, token_type_ids   [batch, sequence] int64
    outputs  logits [batch, C] float32, probs [batch, C] float32 (softmax of logits)

with dynamic ``batch`` and ``sequence`` axes (TorchScript-based ``torch.onnx.export``, which
gives one dense graph). Training-only parts (the latent projection P_k, the loss) are not in it.
Beside ``model.onnx`` a sidecar ``model.json`` holds the :class:`ServingConfig` (label set,
tokenizer, max length, text fields, and a tuned decision rule with its fitted thresholds when the
student has one: lrkd.decision), so predict can run from the ONNX file alone and decides as the test did.
"""
from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lrkd.data.batch import INPUT_KEYS
from lrkd.data.schema import DataError
from lrkd.serve.predict import ServingConfig, TorchScorer

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("logits", "probs")
DEFAULT_OPSET = 17
SIDECAR_FORMAT_VERSION = 1


class ServingStudent(nn.Module):
    """The student as one inference graph: (input_ids, attention_mask, token_type_ids) [B, L] int64
    -> (logits [B, C], probs [B, C]). ``student`` is anything with ``predict_logits`` (a
    StudentModule, or one loaded by :func:`lrkd.serve.hf.load_student_pretrained`)."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self.student = student

    def forward(self, input_ids, attention_mask, token_type_ids):
        logits = self.student.predict_logits(input_ids, attention_mask, token_type_ids)
        return logits, logits.softmax(dim=-1)


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """``student.onnx`` -> ``student.json`` (the serving config beside the model)."""
    return Path(onnx_path).with_suffix(".json")


def int8_path(onnx_path: str | os.PathLike) -> Path:
    """``student.onnx`` -> ``student.int8.onnx``."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".int8" + p.suffix)


def write_sidecar(onnx_path: str | os.PathLike, config: ServingConfig, **extra) -> Path:
    path = sidecar_path(onnx_path)
    payload = {"format_version": SIDECAR_FORMAT_VERSION, "inputs": list(INPUT_KEYS),
               "outputs": list(OUTPUT_NAMES), **config.to_dict(), **extra}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def read_sidecar(onnx_path: str | os.PathLike) -> dict:
    path = sidecar_path(onnx_path)
    if not path.exists():
        raise DataError(f"no serving config {path.name} beside the ONNX model", path=str(onnx_path))
    return json.loads(path.read_text())


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
    import onnx

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
    from onnxruntime.quantization import QuantType, quantize_dynamic

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
        sidecar_path(out).write_text(json.dumps(meta, indent=2) + "\n")
    return out


class OnnxScorer:
    """ONNX Runtime scoring of an exported student: the :class:`~lrkd.serve.predict.Scorer`
    interface. threads: intra-op threads (None = ONNX Runtime's default, all cores)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.exists():
            raise DataError("ONNX model not found", path=str(path))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        self._probs_index = outputs.index("probs") if "probs" in outputs else None

    @property
    def config(self) -> ServingConfig:
        return ServingConfig.from_dict(read_sidecar(self.path))

    def run(self, input_ids, attention_mask, token_type_ids) -> dict[str, np.ndarray]:
        """All outputs by name ({"logits", "probs"}: [B, C] float32)."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feed = {k: np.ascontiguousarray(np.asarray(feed[k]), dtype=np.int64) for k in self.input_names}
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(None, feed)))

    def __call__(self, input_ids, attention_mask, token_type_ids) -> np.ndarray:
        out = self.run(input_ids, attention_mask, token_type_ids)
        if "probs" in out:
            return out["probs"]
        logits = out["logits"]
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- quality cost
def chorus_datamodule(tokenizer: str, max_length: int, batch_size: int = 64, cache_dir: str | None = None):
    """The embedded chorus_icecat data module of ``conf/data/chorus_icecat.yaml`` (its split), with
    the given tokenizer and max length; set up."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lrkd.config import ROOT_DIR

    conf = ROOT_DIR / "conf"
    cfg = OmegaConf.create({"paths": OmegaConf.load(conf / "paths" / "default.yaml"),
                            "student": {"tokenizer": tokenizer},
                            "perspectives": ["user_intent", "structured_analysis", "business_rules"],
                            "data": OmegaConf.load(conf / "data" / "chorus_icecat.yaml")})
    cfg.data.max_length = int(max_length)
    cfg.data.eval_batch_size = int(batch_size)
    if cache_dir is not None:
        cfg.paths.cache_dir = str(cache_dir)
    dm = instantiate(cfg.data, annotations=None, _recursive_=False)  # the test split alone: no teacher needed
    dm.setup("test")
    return dm


def quality_cost(checkpoint: str | os.PathLike, onnx_fp32: str | os.PathLike, onnx_int8: str | os.PathLike,
                 *, split: str = "test", batch_size: int = 64, cache_dir: str | None = None,
                 threads: int | None = None, progress: bool = True, max_length: int | None = None) -> dict:
    """Quality of the eager student, its fp32 ONNX export and the int8 one on a chorus_icecat split
    (default test; the split of conf/data/chorus_icecat.yaml, the one training used by default).

    Returns {"split", "pairs", "metrics": {"eager"|"onnx_fp32"|"onnx_int8": {metric: value}},
    "int8_minus_fp32": {metric: delta}, "max_abs_prob_diff": {"onnx_fp32_vs_eager",
    "onnx_int8_vs_onnx_fp32"}, "argmax_agreement_int8_vs_fp32": fraction}. Metrics are
    :class:`lrkd.metrics.RelevanceMetrics` (macro_f1, qwk, ndcg@10, ...) without prefix.
    """
    from tqdm.auto import tqdm

    from lrkd.metrics import RelevanceMetrics
    from lrkd.serve.predict import load_student

    module, config = load_student(checkpoint, max_length=max_length)
    if config.label_set.num_classes != 4:
        raise ValueError(f"the checkpoint has {config.label_set.num_classes} classes; chorus_icecat has 4 grades")
    dm = chorus_datamodule(config.tokenizer, config.max_length, batch_size, cache_dir)
    scorers = {"eager": TorchScorer(module), "onnx_fp32": OnnxScorer(onnx_fp32, threads),
               "onnx_int8": OnnxScorer(onnx_int8, threads)}
    metrics = {k: RelevanceMetrics(config.label_set, prefix="", has_relevance=True) for k in scorers}
    diff_fp32 = diff_int8 = 0.0
    agree = total = 0
    for batch in tqdm(dm.test_dataloader() if split == "test" else dm.val_dataloader(),
                      desc=f"quality ({split})", disable=not progress):
        inputs = {k: batch[k].numpy() for k in INPUT_KEYS}
        probs = {k: np.asarray(s(**inputs), dtype=np.float32) for k, s in scorers.items()}
        for k, p in probs.items():
            metrics[k].update(torch.from_numpy(p), batch["labels"], batch["query_index"], batch["relevance"])
        diff_fp32 = max(diff_fp32, float(np.abs(probs["onnx_fp32"] - probs["eager"]).max()))
        diff_int8 = max(diff_int8, float(np.abs(probs["onnx_int8"] - probs["onnx_fp32"]).max()))
        agree += int((probs["onnx_int8"].argmax(-1) == probs["onnx_fp32"].argmax(-1)).sum())
        total += len(batch["labels"])
    values = {k: {name: float(v) for name, v in m.compute().items()} for k, m in metrics.items()}
    return {"split": split, "pairs": total, "checkpoint": str(checkpoint), "metrics": values,
            "int8_minus_fp32": {name: values["onnx_int8"][name] - values["onnx_fp32"][name]
                                for name in values["onnx_fp32"]},
            "max_abs_prob_diff": {"onnx_fp32_vs_eager": diff_fp32, "onnx_int8_vs_onnx_fp32": diff_int8},
            "argmax_agreement_int8_vs_fp32": agree / max(total, 1)}


def format_quality(report: dict, keys=("macro_f1", "qwk", "ndcg@10", "accuracy")) -> str:
    """A small Markdown table of :func:`quality_cost`'s result."""
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, m in report["metrics"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
    lines.append("| int8 - fp32 | " + " | ".join(f"{report['int8_minus_fp32'][k]:+.4f}" for k in keys) + " |")
    return "\n".join(lines)


__all__ = ["ServingStudent", "export_onnx", "quantize_int8", "OnnxScorer", "sidecar_path", "int8_path",
           "write_sidecar", "read_sidecar", "chorus_datamodule", "quality_cost", "format_quality",
           "OUTPUT_NAMES", "DEFAULT_OPSET"]
