"""What SFT and DPO with LoRA cost on the 1.5B teacher here: seconds per example, peak memory.

    python benchmarks/teacher_lora_cost.py                 # Qwen2.5-Coder-1.5B (needs `make install-qwen`)
    python benchmarks/teacher_lora_cost.py --steps 3 --threads 2 --completion-tokens 180

The teacher is the one ``teacher=qwen2.5-coder-1.5b teacher.runtime=transformers`` trains: the GGUF
file dequantized into a float32 transformers model (converted once into the cache), a fresh LoRA
adapter (``--lora-r`` on q_proj and v_proj), the real training steps of
:class:`lrkd.teacher.train.module.TeacherSFTModule` and :class:`~lrkd.teacher.train.module.TeacherDPOModule`
(forward, backward, AdamW step) on one example at a time. An example is the MPCoT prompt of a
chorus_icecat train pair and a completion of ``--completion-tokens`` tokens (three short rationales
and the grade: what ``stage=teacher_sft`` trains on); a DPO example is a chosen and a rejected
completion of that length, with the reference from the adapter-disabled model.

Prints a table and writes ``benchmarks/results/teacher_lora_cost.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", default=None, help="a GGUF file (default: the assembled Qwen teacher)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per stage (after one warm-up step)")
    p.add_argument("--completion-tokens", type=int, default=180)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "teacher_lora_cost.json"))
    return p.parse_args(argv)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def main(argv=None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import lrkd  # noqa: F401
    from lrkd.stages.teacher_common import load_pairs
    from lrkd.teacher.label.annotate import pair_prompts
    from lrkd.teacher.train.examples import left_pad
    from lrkd.teacher.train.module import TeacherDPOModule, TeacherSFTModule
    from lrkd.teacher.prompts import perspectives_from_config

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = ["teacher=qwen2.5-coder-1.5b", "teacher.runtime=transformers", "stage=teacher_sft",
                 "extractor=none", "loss=ce", "data.annotations=null",
                 f"teacher.lora={{r: {args.lora_r}, alpha: {2 * args.lora_r}, dropout: 0.05, "
                 "target_modules: [q_proj, v_proj]}",
                 f"teacher.gradient_checkpointing={str(args.gradient_checkpointing).lower()}"]
    if args.gguf:
        overrides += [f"teacher.gguf_file={args.gguf}", "teacher.name=benchmark-gguf"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    teacher = OmegaConf.to_container(cfg.teacher, resolve=True)
    dm = load_pairs(cfg)

    t = time.perf_counter()
    sft = TeacherSFTModule(teacher, {"lr": 1e-4})
    load_s = time.perf_counter() - t
    tok = sft.tokenizer
    perspectives = perspectives_from_config(cfg.perspective)
    row = dm.splits["train"][:1]
    prompt = pair_prompts(tok, dm.frame, row, perspectives, list(dm.label_set.names), 40)[0]
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    rng = np.random.default_rng(0)
    vocab = min(len(tok), 30000)

    def completion():
        return rng.integers(100, vocab, size=args.completion_tokens).tolist()

    def batch_of(completions):
        seqs = [prompt_ids + c for c in completions]
        b = left_pad(seqs, tok.pad_token_id or 0)
        b["completion_mask"] = left_pad([[0] * len(prompt_ids) + [1] * len(c) for c in completions], 0)["input_ids"]
        return b

    def timed_steps(module, make_batch):
        opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)
        module.log = lambda *a, **k: None        # outside a Trainer: the step's logging is a no-op
        module.log_dict = lambda *a, **k: None
        times = []
        for step in range(args.steps + 1):
            batch = make_batch()
            t0 = time.perf_counter()
            loss = module.training_step(batch, step)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step:                             # the first step is a warm-up
                times.append(time.perf_counter() - t0)
        return times

    rows = {}
    sft_times = timed_steps(sft, lambda: batch_of([completion()]))
    rows["sft"] = {"median_s_per_example": float(np.median(sft_times)), "steps": len(sft_times)}
    trainable = sum(p.numel() for p in sft.parameters() if p.requires_grad)
    total = sum(p.numel() for p in sft.parameters())
    del sft

    dpo = TeacherDPOModule(teacher, {"lr": 1e-4}, beta=0.1)

    def dpo_batch():
        b = batch_of([completion(), completion()])   # chosen and rejected stacked in one batch
        b["pair_index"] = torch.tensor([0])
        return b

    dpo_times = timed_steps(dpo, dpo_batch)
    rows["dpo"] = {"median_s_per_example": float(np.median(dpo_times)), "steps": len(dpo_times)}
    result = {"rows": rows, "load_s": load_s, "prompt_tokens": len(prompt_ids),
              "completion_tokens": args.completion_tokens, "trainable_params": trainable, "total_params": total,
              "peak_rss_gb": peak_rss_gb(), "threads": args.threads, "gradient_checkpointing": args.gradient_checkpointing,
              "machine": {"cpus": os.cpu_count(), "processor": platform.processor(), "torch": torch.__version__},
              "date": time.strftime("%Y-%m-%d"), "args": vars(args)}
    print(f"prompt {len(prompt_ids)} + completion {args.completion_tokens} tokens; LoRA r={args.lora_r}: "
          f"{trainable / 1e6:.2f} M of {total / 1e9:.2f} B parameters trainable; load {load_s:.0f} s; "
          f"peak RSS {result['peak_rss_gb']:.1f} GB")
    for k, v in rows.items():
        print(f"{k:<6} {v['median_s_per_example']:8.1f} s per example")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
