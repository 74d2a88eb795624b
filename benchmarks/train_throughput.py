"""Training throughput: the student stage's Lightning path against a plain PyTorch loop.

    python benchmarks/train_throughput.py [--steps 30] [--warmup 5] [--rounds 2] [--batch-size 32]
        [--student minilm|tiny] [--trainer cpu|gpu|...] [--precision 32-true|bf16-mixed|16-mixed]
        [--threads N] [--no-crsd] [--output PATH] [extra Hydra overrides ...]

Both sides train the same thing, in one process, in alternating rounds (so that load from other
jobs hits both alike):

- **framework**: what ``python train.py`` builds: ``conf/train.yaml`` composed with the given
  overrides, the data module, ``StudentModule`` and the Trainer from ``cfg.trainer``
  (``trainer.fit``; validation, checkpoints, loggers and the progress bar off, as they are not
  part of a training step), timed by a callback over ``--steps`` batches after ``--warmup``;
- **plain**: the same data loader, a fresh model with the same seed, the optimizer and LR schedule
  from ``StudentModule.configure_optimizers``, the trainer's gradient clipping and precision
  (``torch.autocast``; a ``GradScaler`` for 16-mixed), in a hand-written loop.

Prints pairs/s for both and their ratio (framework / plain; target >= 0.9), and the step-time ratio
of ``loss=crsd`` to ``loss=ce`` (both through the framework; CRSD also encodes the longer
reasoning-augmented view). CRSD reads rationales from a teacher artefact: a synthetic one is
written for the dataset (``--rationale-words`` words per perspective, about a real teacher's
length); both CE and CRSD runs attach it, so they differ only by the loss.

The ratio is meaningful for one-process trainer configs (cpu, gpu). With ``--trainer ddp_cpu`` or
``ddp`` the framework side runs on several processes (pairs/s of all ranks) while the plain loop
stays on one. Writes JSON (default benchmarks/results/train_throughput.json).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402

import lrkd  # noqa: E402,F401  (config resolvers)

RATIONALE_VOCAB = ("the shopper wants a product that matches the query brand model size colour and use case "
                   "this item is an accessory compatible substitute with the requested specification and price").split()


# ------------------------------------------------------------------------------------- config
def compose(overrides: list[str], out_dir: Path):
    """conf/train.yaml with ``overrides``, as ``python train.py <overrides>`` composes it."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        del cfg["hydra"]
    return cfg


def write_artefact(cfg, root: Path, words: int, seed: int = 0) -> Path:
    """A synthetic teacher artefact over every pair of the configured dataset: rationales of
    ``words`` words per perspective, soft labels and latents (values irrelevant for timing)."""
    from hydra.utils import instantiate

    from lrkd.artefact import ArtefactWriter

    dm = instantiate(cfg.data, seed=cfg.seed, _recursive_=False, annotations=None, with_augmented_view=False)
    dm.setup("fit")
    df, names, perspectives = dm.frame, list(dm.label_set.names), list(cfg.perspectives)
    rng = np.random.default_rng(seed)
    writer = ArtefactWriter(root, teacher_id="synthetic", perspectives=perspectives, label_names=names, vector_dim=16,
                            dataset_fingerprint=dm.fingerprint)
    n = len(df)
    probs = rng.dirichlet(np.ones(len(names)), size=n)
    texts = {p: [" ".join(rng.choice(RATIONALE_VOCAB, size=words)) for _ in range(n)] for p in perspectives}
    writer.write_shard(0, df["query_id"].astype(str).tolist(), df["item_id"].astype(str).tolist(), texts, probs,
                       rng.standard_normal((n, len(perspectives), 16)).astype(np.float32))
    writer.finalize()
    return root


def build(cfg):
    """(data module, model, loss) exactly as the student stage builds them."""
    from hydra.utils import instantiate

    from lrkd.student.module import StudentModule

    L.seed_everything(cfg.seed, workers=True)
    loss = instantiate(cfg.loss)
    dm = instantiate(cfg.data, with_augmented_view=bool(loss.needs_augmented_view), seed=cfg.seed, _recursive_=False)
    dm.setup("fit")
    data_spec = {**dm.spec.to_dict(), "max_length": int(cfg.data.max_length),
                 "text_fields": list(dm.frame.attrs.get("text_fields", []))}
    model = StudentModule(encoder=cfg.student, extractor=cfg.extractor, loss=cfg.loss, optimizer=cfg.optimizer, scheduler=cfg.scheduler,
                          data_spec=data_spec)
    return dm, model, loss


# ---------------------------------------------------------------------------------- framework
class StepTimer(L.Callback):
    """Wall time over the ``steps`` training batches after the first ``warmup`` (each interval runs
    from one batch's end to the next one's: fetch, forward, backward, optimizer, hooks). Handed
    back through ``callback_metrics`` so that it survives spawned ranks."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps, self.ends = warmup, steps, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.ends.append(time.perf_counter())
        if len(self.ends) == self.warmup + self.steps:
            timed = np.diff(self.ends[self.warmup - 1:])
            trainer.callback_metrics["bench/seconds"] = torch.tensor(float(timed.sum()))
            trainer.callback_metrics["bench/median_step_s"] = torch.tensor(float(np.median(timed)))
            trainer.should_stop = True


def time_framework(cfg, warmup: int, steps: int) -> dict:
    from hydra.utils import instantiate

    dm, model, _ = build(cfg)
    trainer = instantiate(cfg.trainer, max_steps=-1, max_epochs=1000, min_epochs=None, limit_val_batches=0,
                          num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False,
                          callbacks=[StepTimer(warmup, steps)])
    trainer.fit(model, datamodule=dm)
    seconds = float(trainer.callback_metrics["bench/seconds"])
    pairs = steps * int(cfg.data.batch_size) * max(int(trainer.world_size), 1)
    return {"pairs_per_s": pairs / seconds, "median_step_s": float(trainer.callback_metrics["bench/median_step_s"])}


# -------------------------------------------------------------------------------------- plain
def _autocast(cfg, device: torch.device):
    precision = str(cfg.trainer.precision)
    if precision.startswith("bf16"):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16), None
    if precision.startswith("16"):
        return lambda: torch.autocast(device.type, dtype=torch.float16), torch.amp.GradScaler(device.type)
    return contextlib.nullcontext, None


def time_plain(cfg, warmup: int, steps: int) -> dict:
    dm, model, loss = build(cfg)
    device = torch.device("cuda" if str(cfg.trainer.accelerator) in ("gpu", "cuda") else "cpu")
    model.to(device).train()
    model._total_training_steps = lambda: warmup + steps  # the schedule's length (no trainer here)
    conf = model.configure_optimizers()
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    clip = float(cfg.trainer.get("gradient_clip_val") or 0.0)
    autocast, scaler = _autocast(cfg, device)
    loader = dm.train_dataloader()
    ends, it = [], iter(loader)
    while len(ends) < warmup + steps:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            out = model(batch, with_augmented_view=loss.needs_augmented_view)
            total, _ = model.loss_fn(out, batch)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
        else:
            total.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ends.append(time.perf_counter())
    timed = np.diff(ends[warmup - 1:])
    return {"pairs_per_s": steps * int(cfg.data.batch_size) / float(timed.sum()),
            "median_step_s": float(np.median(timed))}


# --------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed training batches per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first")
    parser.add_argument("--rounds", type=int, default=2, help="alternating framework/plain rounds (median)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--student", default="minilm", help="conf/student option (tiny for a smoke run)")
    parser.add_argument("--trainer", default="cpu", help="conf/trainer option")
    parser.add_argument("--precision", default=None, help="trainer.precision (default: the trainer config's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rationale-words", type=int, default=60, help="words per perspective rationale (CRSD)")
    parser.add_argument("--no-crsd", action="store_true", help="skip the loss=crsd vs loss=ce ratio")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "train_throughput.json"))
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides, e.g. data.max_length=128")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    base = [f"student={args.student}", f"trainer={args.trainer}", f"data.batch_size={args.batch_size}",
            "callbacks=none", "logger=none", *args.overrides]
    if args.precision:
        base.append(f"trainer.precision={args.precision}")
    result = {"date": dt.datetime.now().isoformat(timespec="seconds"), "machine": platform.processor() or platform.machine(),
              "torch": torch.__version__, "lightning": L.__version__, "threads": torch.get_num_threads(),
              "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "overrides": base}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        artefact = None
        if not args.no_crsd:
            artefact = write_artefact(compose(base, tmp / "run"), tmp / "artefact", args.rationale_words)
        with_artefact = [f"data.annotations={artefact}"] if artefact else []
        ce = compose(base + ["loss=ce"] + with_artefact, tmp / "run")
        runs: dict[str, list[dict]] = {"framework": [], "plain": [], "framework_crsd": []}
        for _ in range(args.rounds):
            runs["framework"].append(time_framework(ce, args.warmup, args.steps))
            runs["plain"].append(time_plain(ce, args.warmup, args.steps))
            if artefact:
                runs["framework_crsd"].append(time_framework(compose(base + ["loss=crsd"] + with_artefact,
                                                                     tmp / "run"), args.warmup, args.steps))

    def med(name, key):
        return statistics.median(r[key] for r in runs[name]) if runs[name] else None

    result["framework_pairs_per_s"] = med("framework", "pairs_per_s")
    result["plain_pairs_per_s"] = med("plain", "pairs_per_s")
    result["framework_over_plain"] = result["framework_pairs_per_s"] / result["plain_pairs_per_s"]
    if artefact:
        result["crsd_over_ce_step_time"] = med("framework_crsd", "median_step_s") / med("framework", "median_step_s")
    result["runs"] = runs

    print(f"\ntraining throughput ({args.student}, trainer={args.trainer}, batch {args.batch_size}, "
          f"{args.steps} steps x {args.rounds} rounds, {result['threads']} threads)")
    print("| loop | pairs/s | median step s |\n|---|---:|---:|")
    print(f"| framework (Lightning, student stage) | {result['framework_pairs_per_s']:.1f} | {med('framework', 'median_step_s'):.4f} |")
    print(f"| plain PyTorch | {result['plain_pairs_per_s']:.1f} | {med('plain', 'median_step_s'):.4f} |")
    print(f"framework / plain: {result['framework_over_plain']:.3f} (target >= 0.9)")
    if artefact:
        print(f"step time loss=crsd / loss=ce: {result['crsd_over_ce_step_time']:.2f}x")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")
    return result


if __name__ == "__main__":
    main()
