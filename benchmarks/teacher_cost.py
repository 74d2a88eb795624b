"""The teacher's cost per pair against the student's, measured side by side in one process.

    python benchmarks/teacher_cost.py                       # Qwen2.5-Coder-1.5B (needs `make install-qwen`)
    python benchmarks/teacher_cost.py --gguf path/to/model.gguf --pairs 6 --rationale-pairs 1

One thread for everything (llama.cpp and torch), rows interleaved in rounds so that load from other
processes hits each alike. Rows, per chorus_icecat test pair:

- teacher/read: the judgement reading of ``stage=teacher_score`` (instruction in the KV cache,
  the pair, ``Answer:``; P(yes) and the decision state);
- teacher/rationale: greedy generation of the multi-perspective rationale (``--new-tokens``) after
  the annotation prompt, the cost of one MPCoT annotation;
- student: the default student (all-MiniLM-L6-v2 cross-encoder, ``extractor=none``) scoring the
  same pair at batch 1, 64 tokens, eager PyTorch.

Prints a table and writes ``benchmarks/results/teacher_cost.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", default=None, help="a GGUF file (default: the assembled Qwen teacher)")
    p.add_argument("--pairs", type=int, default=8, help="test pairs read per round")
    p.add_argument("--rationale-pairs", type=int, default=1, help="pairs with a generated rationale per round")
    p.add_argument("--new-tokens", type=int, default=96)
    p.add_argument("--student-calls", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "teacher_cost.json"))
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from hydra import compose, initialize_config_dir

    import lrkd  # noqa: F401
    from lrkd.stages.teacher_common import load_pairs
    from lrkd.student.module import StudentModule
    from lrkd.teacher.runtime.llama_cpp import LlamaCppRuntime
    from lrkd.teacher.model import llama_cpp_source
    from lrkd.teacher.prompts import JUDGE_ANSWERS, JUDGE_PREFIX, perspectives_from_config
    from lrkd.teacher.label.readers import prompts_for_rows, read_pair, split_prompt
    from lrkd.teacher.tokens import answer_token_ids

    torch.set_num_threads(1)
    overrides = ["teacher=qwen2.5-coder-1.5b", "stage=teacher_score", "extractor=none", "loss=ce",
                 "data.annotations=null"]
    if args.gguf:
        overrides += [f"teacher.gguf_file={args.gguf}", "teacher.name=benchmark-gguf"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    dm = load_pairs(cfg)
    gguf, tokenizer = llama_cpp_source(cfg.teacher)
    rows = np.random.default_rng(0).permutation(dm.splits["test"])[:max(args.pairs, args.rationale_pairs)]
    prompts = prompts_for_rows(tokenizer, dm.frame, rows, cfg.stage.max_item_words)
    prefix, answers = answer_token_ids(tokenizer, JUDGE_PREFIX, JUDGE_ANSWERS)
    from lrkd.teacher.label.annotate import pair_prompts

    perspectives = perspectives_from_config(cfg.perspective)
    multi = [split_prompt(tokenizer, t) for t in pair_prompts(tokenizer, dm.frame, rows[:args.rationale_pairs],
                                                              perspectives, list(dm.label_set.names), 40)]
    runtime = LlamaCppRuntime(gguf, n_ctx=1024, n_threads=1)

    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from latency import EagerRunner, student, synthetic_inputs

    runner = EagerRunner("student", student("none"))
    runner.prepare(synthetic_inputs(1, 64, 30000))

    def student_call():
        runner()

    times = {"teacher/read": [], "teacher/rationale": [], "student": []}
    new_tokens = []
    read_pair(runtime, prompts[0].shared, prompts[0].pair, prefix, answers)  # warm-up: the instruction
    student_call()
    for _ in range(args.rounds):
        for p in prompts[:args.pairs]:
            t = time.perf_counter()
            read_pair(runtime, p.shared, p.pair, prefix, answers)
            times["teacher/read"].append(time.perf_counter() - t)
        for shared, pair in multi:
            t = time.perf_counter()
            out = runtime.generate([shared], pair, args.new_tokens, no_repeat_ngram_size=3)
            times["teacher/rationale"].append(time.perf_counter() - t)
            new_tokens.append(len(out))
        for _ in range(args.student_calls):
            t = time.perf_counter()
            student_call()
            times["student"].append(time.perf_counter() - t)
    summary = {k: {"median_s": float(np.median(v)), "mean_s": float(np.mean(v)), "calls": len(v)}
               for k, v in times.items() if v}
    student_s = summary["student"]["median_s"]
    for k in ("teacher/read", "teacher/rationale"):
        if k in summary:
            summary[k]["x_student"] = summary[k]["median_s"] / student_s
    result = {"rows": summary, "rationale_new_tokens_mean": float(np.mean(new_tokens)) if new_tokens else None,
              "gguf": os.path.basename(gguf), "threads": 1, "machine": {"cpus": os.cpu_count(),
              "processor": platform.processor(), "torch": torch.__version__},
              "date": time.strftime("%Y-%m-%d"), "args": vars(args)}
    print(f"{'row':<20} {'median':>10} {'x student':>10}")
    for k, v in summary.items():
        unit = f"{v['median_s'] * 1000:.1f} ms" if k == "student" else f"{v['median_s']:.2f} s"
        print(f"{k:<20} {unit:>10} {v.get('x_student', 1.0):>10.0f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    runtime.close()
    return result


if __name__ == "__main__":
    main()
