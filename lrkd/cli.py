"""``lrkd``: the one command line of lrkd (``[project.scripts]`` in pyproject.toml).

    lrkd train [group=option ...] [-m]     train a stage (Hydra; the same as ``python train.py``)
    lrkd predict --checkpoint C --input F --output O    score a file of (query, item) pairs
    lrkd export --checkpoint C --output student.onnx    ONNX (fp32, int8) and the save_pretrained form
    lrkd serve --onnx student.onnx [--port 8080]       the student behind HTTP rerank APIs (lrkd.serve.server)
    lrkd report DIR ...                     multirun directories -> tables and plots
    lrkd zero-to-fp32 DIR [OUT]             a DeepSpeed ZeRO checkpoint -> one fp32 .ckpt

``lrkd <command> --help`` tells a command's options. Exit status: 0 done, 2 bad input (the
message names the file, row and column), 1 another error.

Each command imports what it runs inside its function: ``lrkd report`` needs no torch, ``lrkd
train`` no ONNX Runtime, and ``lrkd --help`` nothing.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import runpy
import sys
from pathlib import Path
from typing import Callable, Sequence

from omegaconf import OmegaConf

from lrkd.run.resolvers import ROOT_DIR
from lrkd.schema import DataError
from lrkd.utils import write_json_atomic

COMMANDS = {
    "train": "train a stage: Hydra overrides, as `python train.py` takes them (conf/train.yaml)",
    "predict": "score a CSV/TSV, JSONL or Parquet file of (query, item) pairs",
    "export": "export a student to ONNX (fp32, int8) and the save_pretrained form",
    "serve": "serve a student over HTTP: TEI /rerank, Cohere/Jina /v1 and /v2/rerank, /score",
    "report": "multirun directories -> grouped tables (md, csv) and plots",
    "zero-to-fp32": "a DeepSpeed ZeRO checkpoint directory -> one fp32 .ckpt",
}


def _logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lrkd").setLevel(logging.INFO)


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


# ------------------------------------------------------------------------------------ train
def train(argv: Sequence[str]) -> int:
    """Run :mod:`lrkd.train` as ``python -m lrkd.train <argv>`` would (Hydra reads sys.argv, and
    DDP re-launches each rank with ``-m lrkd.train``)."""
    saved = sys.argv
    sys.argv = [importlib.util.find_spec("lrkd.train").origin, *argv]
    try:
        runpy.run_module("lrkd.train", run_name="__main__", alter_sys=True)
    except SystemExit as e:  # Hydra exits with 1 on an error, 0 after --help
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return 0


# ---------------------------------------------------------------------------------- predict
def predict_parser(prog: str = "lrkd predict") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Score a CSV/TSV, JSONL or Parquet file of (query, item) "
                                "pairs (lrkd.serve.predict: output columns, malformed rows).")
    p.add_argument("--checkpoint", help="a student .ckpt, or a save_pretrained directory")
    p.add_argument("--onnx", help="score with ONNX Runtime on this exported model (lrkd export); "
                                  "its sidecar JSON replaces the checkpoint")
    p.add_argument("--input", required=True, help="pairs file: .csv, .tsv, .jsonl or .parquet (text may be .gz)")
    p.add_argument("--output", required=True, help="scored file: .csv, .tsv, .jsonl or .parquet")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per pair (default: the training max length if recorded, else 128)")
    p.add_argument("--columns", default=None,
                   help="schema name=input column, comma-separated (query, item_title, text fields)")
    p.add_argument("--text-fields", default=None,
                   help="item text fields after the title, in training order (default: recorded by the model, "
                        "or a Parquet file's metadata)")
    p.add_argument("--keep-columns", default=None, help="input columns to copy to the output (default: all)")
    p.add_argument("--strict", action="store_true", help="stop with an error at the first malformed row")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def predict(argv: Sequence[str]) -> int:
    """Exit 0 when the file was scored (malformed rows are kept in the output with their line and
    error, and counted in the summary line), 2 on a data error (with --strict: the first malformed row)."""
    parser = predict_parser()
    args = parser.parse_args(argv)
    _logging()
    if args.checkpoint is None and args.onnx is None:
        parser.error("give --checkpoint, --onnx, or both")
    import torch

    from lrkd.serve.predict import parse_columns, predict_file
    from lrkd.serve.scorers import load_scorer

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        scorer, config = load_scorer(args.checkpoint, args.onnx, max_length=args.max_length, threads=args.threads)
        summary = predict_file(args.input, args.output, scorer, config, batch_size=args.batch_size,
                               columns=parse_columns(args.columns), text_fields=_names(args.text_fields),
                               keep_columns=_names(args.keep_columns), strict=args.strict,
                               progress=not args.no_progress)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary.line(), flush=True)
    return 0


# ----------------------------------------------------------------------------------- export
def export_parser(prog: str = "lrkd export") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Export a student as ONNX (fp32, optionally int8) with its "
                                "serving config (student.json beside student.onnx).")
    p.add_argument("--checkpoint", required=True, help="a student .ckpt, or a save_pretrained directory")
    p.add_argument("--output", required=True, help="the fp32 ONNX file to write (e.g. student.onnx)")
    p.add_argument("--int8", action="store_true", help="also write <output>.int8.onnx (dynamic quantization)")
    p.add_argument("--per-tensor", action="store_true",
                   help="int8 with one weight scale per tensor (default: per output channel, more accurate)")
    p.add_argument("--measure-quality", action="store_true",
                   help="compare eager, fp32 and int8 on the test split of --data (implies --int8); "
                        "writes <output>.quality.json")
    p.add_argument("--data", default="chorus_icecat",
                   help="the conf/data option whose test split --measure-quality scores (default chorus_icecat)")
    p.add_argument("--max-length", type=int, default=None,
                   help="recorded in the sidecar (default: from the checkpoint)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--hf-dir", default=None, help="also save the student in save_pretrained form here")
    return p


def export(argv: Sequence[str]) -> int:
    args = export_parser().parse_args(argv)
    _logging()
    from lrkd.serve.export import export_onnx, int8_path, quantize_int8
    from lrkd.serve.hf import save_student_pretrained
    from lrkd.serve.quality import format_quality, quality_cost
    from lrkd.serve.scorers import OnnxScorer, TorchScorer, load_served

    try:
        student, config = load_served(args.checkpoint, max_length=args.max_length)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = export_onnx(student, args.output, config, opset=args.opset)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) and {out.with_suffix('.json')}")
    if args.int8 or args.measure_quality:
        q = quantize_int8(out, per_channel=not args.per_tensor)
        print(f"wrote {q} ({q.stat().st_size / 2**20:.1f} MiB)")
    if args.hf_dir:
        print(f"wrote {save_student_pretrained(student, args.hf_dir, serving=config)}")
    if args.measure_quality:
        dm = eval_datamodule(args.data, config.tokenizer, config.max_length)
        if list(dm.label_set.names) != list(config.label_set.names):
            print(f"error: the student grades {list(config.label_set.names)}, data={args.data} "
                  f"{list(dm.label_set.names)}", file=sys.stderr)
            return 2
        scorers = {"eager": TorchScorer(student), "onnx_fp32": OnnxScorer(out), "onnx_int8": OnnxScorer(int8_path(out))}
        report = {"data": args.data, "split": "test", "checkpoint": str(args.checkpoint),
                  **quality_cost(scorers, dm.test_dataloader(), config.label_set)}
        path = write_json_atomic(Path(out).with_suffix(".quality.json"), report)
        print(format_quality(report))
        print(f"wrote {path}")
    return 0


def eval_datamodule(data: str, tokenizer: str, max_length: int, batch_size: int = 64):
    """The data module of ``conf/data/<data>.yaml`` (its split) with the given tokenizer and max
    length, set up for its test split (no teacher artefact)."""
    from hydra.utils import instantiate  # as the commands do: Hydra only when it builds something

    conf = ROOT_DIR / "conf"
    cfg = OmegaConf.create({"paths": OmegaConf.load(conf / "paths" / "default.yaml"),
                            "student": {"tokenizer": tokenizer},
                            "perspectives": ["user_intent", "structured_analysis", "business_rules"],
                            "data": OmegaConf.load(conf / "data" / f"{data}.yaml")})
    cfg.data.max_length = int(max_length)
    cfg.data.eval_batch_size = int(batch_size)
    dm = instantiate(cfg.data, annotations=None, _recursive_=False)
    dm.setup("test")
    return dm


# --------------------------------------------------------------------------- serve, report, zero-to-fp32
def serve(argv: Sequence[str]) -> int:
    from lrkd.serve.server import main as serve_main

    return serve_main(argv, prog="lrkd serve")


def report(argv: Sequence[str]) -> int:
    from lrkd.report import main as report_main

    return report_main(argv, prog="lrkd report")


def zero_to_fp32(argv: Sequence[str]) -> int:
    from lrkd.lightning.deepspeed import main as zero_main

    return zero_main(argv, prog="lrkd zero-to-fp32")


RUNNERS: dict[str, Callable[[Sequence[str]], int]] = {
    "train": train, "predict": predict, "export": export, "serve": serve, "report": report, "zero-to-fp32": zero_to_fp32}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lrkd", description="lrkd: train a relevance student (and its teacher), score and "
                                "export it, report sweeps.",
                                epilog="`lrkd <command> --help` tells a command's options.")
    sub = p.add_subparsers(dest="command", metavar="<command>", title="commands")
    for name, text in COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in RUNNERS:
        p = parser()
        if not argv or argv[0] in ("-h", "--help"):
            p.print_help()
            return 0 if argv else 2
        p.error(f"unknown command {argv[0]!r}; choose from {', '.join(RUNNERS)}")
    return RUNNERS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
