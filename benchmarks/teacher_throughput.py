"""The teacher's throughput: one sequence per worker against N sequences per context, side by side.

    python benchmarks/teacher_throughput.py                    # Qwen2.5-Coder-1.5B (needs `make install-qwen`)
    python benchmarks/teacher_throughput.py --threads 1 2 --n-seq 1 2 4 8 16 --prompts 16

Every row runs on the same cores (``--threads``: 1 or 2), after its model is loaded (loading is not
timed), in rounds so that drift of the machine hits every row alike:

- generation: greedy MPCoT generation (``--new-tokens``) after the annotation prompt of
  ``--prompts`` chorus_icecat train pairs. ``sequential``: today's path, ``threads`` worker processes
  of one thread, each one sequence at a time (:class:`lrkd.teacher.runtime.llama_cpp.LlamaCppRuntime`);
  ``batched``: one process of ``threads`` threads with N sequences in one context
  (:class:`lrkd.teacher.runtime.batched.BatchedDecoder`). Figure: generated tokens per second of wall time.
- reading: the judgement reading of ``stage=teacher_score`` of ``--read-pairs`` pairs, sequential
  workers against batched workers. Figure: pairs per hour.

Each engine (``cyllama``, ``ik_llama``) is measured where installed; the baseline is today's path
(cyllama, one sequence per worker). Prints a table and writes
``benchmarks/results/teacher_throughput.json`` with the machine's CPU flags.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", default=None, help="a GGUF file (default: the assembled Qwen teacher)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--n-seq", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--engines", nargs="+", default=["cyllama", "ik_llama"])
    p.add_argument("--prompts", type=int, default=16, help="generation prompts per row")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--read-pairs", type=int, default=48)
    p.add_argument("--read-n-seq", type=int, default=8)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "teacher_throughput.json"))
    return p.parse_args(argv)


def _prompts(args):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from hydra import compose, initialize_config_dir

    import lrkd  # noqa: F401
    from lrkd.stages.teacher_common import load_pairs
    from lrkd.teacher.model import llama_cpp_source
    from lrkd.teacher.prompts import JUDGE_ANSWERS, JUDGE_PREFIX, perspectives_from_config
    from lrkd.teacher.label.readers import prompts_for_rows
    from lrkd.teacher.tokens import answer_token_ids

    overrides = ["teacher=qwen2.5-coder-1.5b", "stage=teacher_score", "data.annotations=null"]
    if args.gguf:
        overrides += [f"teacher.gguf_file={args.gguf}", "teacher.name=benchmark-gguf"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    dm = load_pairs(cfg)
    gguf, tokenizer = llama_cpp_source(cfg.teacher)
    rows = np.random.default_rng(0).permutation(dm.splits["train"])
    multi = prompts_for_rows(tokenizer, dm.frame, rows[:args.prompts], cfg.teacher.max_item_words,
                             perspectives=perspectives_from_config(cfg.perspective),
                             grade_names=list(dm.label_set.names))
    judge = prompts_for_rows(tokenizer, dm.frame, rows[:args.read_pairs], cfg.stage.max_item_words)
    prefix, answers = answer_token_ids(tokenizer, JUDGE_PREFIX, JUDGE_ANSWERS)
    return gguf, multi, judge, prefix, answers


def _worker(task) -> dict:
    """One process's share of a row: returns {tokens|pairs, seconds} timed after the model loads."""
    kind, gguf, engine, threads, n_seq, prompts, extra, barrier = task
    from lrkd.teacher.runtime.batched import BatchedDecoder, Feed, Prefix, context_cells, generation
    from lrkd.teacher.runtime.engines import open_engine
    from lrkd.teacher.runtime.llama_cpp import LlamaCppRuntime
    from lrkd.teacher.label.readers import JudgementReader, SequenceLimits

    new_tokens = extra.get("new_tokens", 64)
    if n_seq == 0:  # one sequence at a time
        runtime = LlamaCppRuntime(gguf, n_ctx=1024, n_threads=threads, engine=engine)
        barrier.wait()
        started, count = time.perf_counter(), 0
        for p in prompts:
            if kind == "generation":
                count += len(runtime.generate([p.shared], p.pair, new_tokens))
            else:
                JudgementReader(extra["prefix"], extra["answers"])(runtime, p)
                count += 1
        seconds = time.perf_counter() - started
        runtime.close()
        return {"count": count, "seconds": seconds}
    eng = open_engine(gguf, engine, n_ctx=context_cells(n_seq, 512, 2, 320), n_threads=threads, n_batch=512,
                      n_seq=n_seq + 2)
    decoder = BatchedDecoder(eng, n_seq)
    limits = SequenceLimits(512, eng.is_eog)

    def generate(p):
        yield Prefix(tuple(p.shared))
        first = yield Feed(p.pair, "last")
        ids = yield from generation(first, new_tokens, eng.is_eog, ctx_limit=512)
        return len(ids)

    if kind == "generation":
        requests = [(i, (lambda p=p: generate(p))) for i, p in enumerate(prompts)]
    else:
        reader = JudgementReader(extra["prefix"], extra["answers"])
        requests = [(i, (lambda p=p: reader.program(p, limits))) for i, p in enumerate(prompts)]
    barrier.wait()
    started = time.perf_counter()
    results = list(decoder.run(requests))
    seconds = time.perf_counter() - started
    count = sum(v for _, v in results) if kind == "generation" else len(results)
    eng.close()
    return {"count": count, "seconds": seconds}


def run_row(kind, gguf, engine, threads, n_seq, prompts, extra) -> dict:
    """``n_seq`` 0: ``threads`` one-thread workers, one sequence each at a time; else one process of
    ``threads`` threads with ``n_seq`` sequences. Wall = the slowest worker."""
    ctx = mp.get_context("spawn")
    workers = threads if n_seq == 0 else 1
    barrier = ctx.Manager().Barrier(workers)
    shares = [prompts[w::workers] for w in range(workers)]
    per = 1 if n_seq == 0 else threads
    with ctx.Pool(workers) as pool:
        out = pool.map(_worker, [(kind, gguf, engine, per, n_seq, s, extra, barrier) for s in shares])
    count = sum(o["count"] for o in out)
    seconds = max(o["seconds"] for o in out)
    return {"kind": kind, "engine": engine, "threads": threads, "n_seq": n_seq or 1,
            "mode": "sequential" if n_seq == 0 else "batched", "count": count, "seconds": seconds,
            "per_second": count / seconds}


def cpu_flags() -> str:
    try:
        flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        line = next(l for l in flags.splitlines() if l.startswith("Flags"))
        return " ".join(f for f in line.split()[1:] if f.startswith(("avx", "fma", "amx")))
    except Exception:  # noqa: BLE001 - informative only
        return "unknown"


def main(argv=None) -> dict:
    args = parse_args(argv)
    from lrkd.teacher.runtime.engines import engine_available

    gguf, multi, judge, prefix, answers = _prompts(args)
    engines = [e for e in args.engines if engine_available(e)]
    extra = {"new_tokens": args.new_tokens, "prefix": prefix, "answers": answers}
    plan = []
    for threads in args.threads:
        plan.append(("generation", "cyllama", threads, 0))
        for engine in engines:
            if engine != "cyllama":
                plan.append(("generation", engine, threads, 0))
            plan += [("generation", engine, threads, n) for n in args.n_seq]
        plan.append(("reading", "cyllama", threads, 0))
        plan += [("reading", engine, threads, args.read_n_seq) for engine in engines]
    rows = []
    for kind, engine, threads, n_seq in plan:
        prompts = multi if kind == "generation" else judge
        row = run_row(kind, gguf, engine, threads, n_seq, prompts, extra)
        rows.append(row)
        unit = "tokens/s" if kind == "generation" else "pairs/h"
        value = row["per_second"] * (1 if kind == "generation" else 3600)
        print(f"{kind:<11} {engine:<9} threads={threads} {row['mode']:<10} n_seq={row['n_seq']:<3} "
              f"{value:9.1f} {unit}", flush=True)

    def best(kind, threads, mode):
        cands = [r for r in rows if r["kind"] == kind and r["threads"] == threads and r["mode"] == mode
                 and (mode == "batched" or r["engine"] == "cyllama")]
        return max(cands, key=lambda r: r["per_second"]) if cands else None

    top = max(args.threads)
    seq, bat = best("generation", top, "sequential"), best("generation", top, "batched")
    read_seq, read_bat = best("reading", top, "sequential"), best("reading", top, "batched")
    result = {
        "generation": {"threads": top, "sequential_tokens_per_s": seq["per_second"],
                       "batched_tokens_per_s": bat["per_second"], "n_seq": bat["n_seq"], "engine": bat["engine"],
                       "ratio": bat["per_second"] / seq["per_second"]},
        "reading": {"threads": top, "pairs_per_hour": read_bat["per_second"] * 3600, "engine": read_bat["engine"],
                    "n_seq": read_bat["n_seq"], "sequential_pairs_per_hour": read_seq["per_second"] * 3600},
        "rows": rows, "gguf": os.path.basename(gguf), "new_tokens": args.new_tokens, "prompts": len(multi),
        "read_pairs": len(judge),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor(), "cpu_flags": cpu_flags()},
        "date": time.strftime("%Y-%m-%d"), "args": vars(args),
    }
    print(f"generation: batched {result['generation']['ratio']:.2f}x sequential at {top} threads; "
          f"reading {result['reading']['pairs_per_hour']:.0f} pairs/h "
          f"(sequential {result['reading']['sequential_pairs_per_hour']:.0f})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
