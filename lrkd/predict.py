"""``python -m lrkd.predict``: score a CSV/TSV, JSONL or Parquet file of (query, item) pairs.

    python -m lrkd.predict --checkpoint logs/student/runs/<time>/checkpoints/best-*.ckpt \\
        --input pairs.csv --output scored.csv [--onnx student.onnx] [--batch-size 64] \\
        [--max-length N] [--columns query=search_term,item_title=product_title] \\
        [--text-fields brand,description,attributes] [--keep-columns a,b] [--strict]

See :mod:`lrkd.serve.predict` for the output columns. Exit status: 0 when the file was scored
(malformed rows are kept in the output with their line and error, and counted in the summary
line), 2 on a data error (with ``--strict``: the first malformed row).
"""
from __future__ import annotations

import argparse
import logging
import sys

from lrkd.data.schema import DataError
from lrkd.serve.predict import DEFAULT_BATCH_SIZE, load_scorer, parse_columns, predict_file


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lrkd.predict", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a student .ckpt, or a save_pretrained directory (lrkd.serve.hf)")
    p.add_argument("--onnx", help="score with ONNX Runtime on this exported model (python -m lrkd.export); "
                                  "its sidecar JSON replaces the checkpoint")
    p.add_argument("--input", required=True, help="pairs file: .csv, .tsv, .jsonl or .parquet (text may be .gz)")
    p.add_argument("--output", required=True, help="scored file: .csv, .tsv, .jsonl or .parquet")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lrkd").setLevel(logging.INFO)
    if args.checkpoint is None and args.onnx is None:
        build_parser().error("give --checkpoint, --onnx, or both")
    if args.threads:
        import torch

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


if __name__ == "__main__":
    sys.exit(main())
