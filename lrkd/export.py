"""``python -m lrkd.export``: the student as ONNX (fp32, optionally int8), with its serving config.

    python -m lrkd.export --checkpoint best.ckpt --output student.onnx [--int8] [--measure-quality]

Writes ``student.onnx`` and ``student.json`` (label set, tokenizer, max length); with ``--int8``
also ``student.int8.onnx`` (+ ``.json``), int8 dynamic quantization; with ``--measure-quality``
the macro-F1 / QWK / nDCG@10 of eager, fp32 ONNX and int8 ONNX on chorus_icecat's test split,
printed and written to ``student.quality.json``. See :mod:`lrkd.serve.export`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from lrkd.data.schema import DataError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lrkd.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a student .ckpt, or a save_pretrained directory")
    p.add_argument("--output", required=True, help="the fp32 ONNX file to write (e.g. student.onnx)")
    p.add_argument("--int8", action="store_true", help="also write <output>.int8.onnx (dynamic quantization)")
    p.add_argument("--per-tensor", action="store_true",
                   help="int8 with one weight scale per tensor (default: per output channel, more accurate)")
    p.add_argument("--measure-quality", action="store_true",
                   help="compare eager, fp32 and int8 on chorus_icecat's test split (implies --int8)")
    p.add_argument("--max-length", type=int, default=None,
                   help="recorded in the sidecar (default: from the checkpoint)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--hf-dir", default=None, help="also save the student in save_pretrained form here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lrkd").setLevel(logging.INFO)
    from lrkd.serve.export import export_onnx, format_quality, int8_path, quality_cost, quantize_int8
    from lrkd.serve.predict import load_student

    try:
        module, config = load_student(args.checkpoint, max_length=args.max_length)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = export_onnx(module, args.output, config, opset=args.opset)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) and {out.with_suffix('.json')}")
    if args.int8 or args.measure_quality:
        q = quantize_int8(out, per_channel=not args.per_tensor)
        print(f"wrote {q} ({q.stat().st_size / 2**20:.1f} MiB)")
    if args.hf_dir:
        from lrkd.serve.hf import save_student_pretrained

        print(f"wrote {save_student_pretrained(module, args.hf_dir, max_length=config.max_length)}")
    if args.measure_quality:
        report = quality_cost(args.checkpoint, out, int8_path(out), max_length=args.max_length)
        path = Path(out).with_suffix(".quality.json")
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(format_quality(report))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
