"""The quality cost of serving an int8 export: the eager student, its fp32 ONNX export and the
int8 one scored side by side on chorus_icecat's test split (``lrkd export --measure-quality``)."""
from __future__ import annotations

import os

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from lrkd.run.resolvers import ROOT_DIR
from lrkd.data.batch import INPUT_KEYS
from lrkd.evaluation.metrics import RelevanceMetrics
from lrkd.serve.scorers import OnnxScorer, TorchScorer, load_student


def chorus_datamodule(tokenizer: str, max_length: int, batch_size: int = 64, cache_dir: str | None = None):
    """The embedded chorus_icecat data module of ``conf/data/chorus_icecat.yaml`` (its split), with
    the given tokenizer and max length; set up."""
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
    :class:`lrkd.evaluation.metrics.RelevanceMetrics` (macro_f1, qwk, ndcg@10, ...) without prefix.
    """
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


__all__ = ["chorus_datamodule", "quality_cost", "format_quality"]
