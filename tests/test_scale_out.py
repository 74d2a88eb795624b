"""Scale-out on the CPU (issue 4): the trainer configs compose with every stage; the student and a
teacher stage under ``trainer=ddp_cpu`` (2 processes, gloo) write one output directory, rank 0's
files once, and validation/test metrics equal a single-process evaluation of the same checkpoint;
a 2-job multirun under DDP; annotation on 2 ranks equals 1 process; each DeepSpeed config builds
the intended ZeRO section, ``deepspeed.initialize`` runs ZeRO-2/3 on gloo, and a ZeRO checkpoint
converts to one fp32 file that the student's loaders read with equal weights.

GPU fits under each DeepSpeed config: tests/test_scale_out_gpu.py."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lrkd.stages import get_stage

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("student", "teacher_sft", "teacher_dpo", "teacher_annotate")
SCALE_TRAINERS = ("ddp", "ddp_cpu", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload")
ZERO = {"deepspeed_zero2": (2, False), "deepspeed_zero3": (3, False), "deepspeed_zero3_offload": (3, True)}
FAST_STUDENT = ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "data.batch_size=8",
                "callbacks.progress_bar=null"]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Two ranks on a shared 2-core machine: one thread each."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)


def tree(path: Path) -> set[str]:
    """Every file and folder under ``path`` (relative, '/'-separated)."""
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


# ------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("trainer", SCALE_TRAINERS)
def test_every_scale_trainer_composes_with_every_stage(make_cfg, stage, trainer):
    cfg = make_cfg(f"stage={stage}", f"trainer={trainer}", "trainer.precision=16-mixed",
                   "trainer.accumulate_grad_batches=4", "student.gradient_checkpointing=true",
                   "teacher.gradient_checkpointing=true")
    node = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert node["_target_"] == "lightning.pytorch.Trainer" and node["precision"] == "16-mixed"
    assert node["accumulate_grad_batches"] == 4 and cfg.stage.name == stage
    if trainer in ZERO:
        assert node["strategy"]["_target_"] == "lightning.pytorch.strategies.DeepSpeedStrategy"
    else:
        assert node["strategy"] in ("ddp_fork", "ddp_spawn")  # pytest: never a script re-run


def test_ddp_strategy_and_run_stamp_follow_the_launch(monkeypatch):
    from types import SimpleNamespace

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from lrkd.lightning.distributed import ddp_strategy, run_stamp

    for key in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK", "WORLD_SIZE", "SLURM_NTASKS", "LRKD_RUN_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
    for mode, expected in ((RunMode.RUN, "ddp"), (RunMode.MULTIRUN, "ddp_spawn")):
        monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda m=mode: SimpleNamespace(mode=m)))
        assert ddp_strategy() == expected, mode
    assert run_stamp("%Y") == str(__import__("datetime").date.today().year)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert ddp_strategy() == "ddp"  # torchrun started the ranks (even in a multirun): nothing to relaunch
    assert run_stamp() == "torchrun-abc"  # every rank names the same run directory
    monkeypatch.setenv("LRKD_RUN_ID", "exp7")
    assert run_stamp() == "exp7"


def test_distributed_train_sampler_shares_the_permutation_and_resumes():
    from lrkd.data.sampler import DistributedEpochSeededSampler, EpochSeededSampler

    single = EpochSeededSampler(11, seed=5)
    single.set_epoch(3)
    ranks = [DistributedEpochSeededSampler(11, num_replicas=2, rank=r, seed=5) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    shares = [list(s) for s in ranks]
    assert len(shares[0]) == len(shares[1]) == 6  # padded: every rank runs the same number of steps
    order = single.permutation()
    assert [i for pair in zip(*shares) for i in pair][:11] == order  # the same seeded order, interleaved
    ranks[1].load_state_dict({"epoch": 3, "consumed": 4, "seed": 5})
    assert list(ranks[1]) == shares[1][4:]  # mid-epoch resume skips this rank's consumed indices


# -------------------------------------------------------------------------- the student on DDP
def _single_process_eval(cfg, ckpt: str) -> dict:
    """Validate and test ``ckpt`` in this process, one device."""
    from lrkd.student.module import StudentModule

    dm = instantiate(cfg.data, seed=cfg.seed, _recursive_=False)
    dm.setup("fit")
    model = StudentModule.load_from_checkpoint(ckpt, weights_only=True, map_location="cpu")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    out = trainer.validate(model, datamodule=dm, verbose=False)[0]
    out.update(trainer.test(model, datamodule=dm, verbose=False)[0])
    assert len(dm.dataset("val")) % 2 == 1  # uneven over 2 ranks: a padding sampler would repeat a row
    return out


def test_student_on_two_cpu_ranks_writes_once_and_matches_a_single_process(make_cfg, tmp_path):
    run = tmp_path / "run"
    cfg = make_cfg("trainer=ddp_cpu", *FAST_STUDENT, output_dir=run)
    result = get_stage("student")(cfg)

    files = tree(run)
    best = Path(result["best_checkpoint"])
    assert files == {"metrics.json", "stage.json", "checkpoints", "checkpoints/last.ckpt", f"checkpoints/{best.name}", "csv",
                     "csv/metrics.csv", "csv/hparams.yaml"}, files
    assert not (tmp_path / "logs").exists() and not (ROOT / "lightning_logs").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert torch.load(best, weights_only=True)["global_step"] == 4  # 4 steps of 2 ranks x 8 pairs

    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    val_row = next(r for r in rows if r.get("val/macro_f1"))
    single = _single_process_eval(cfg, str(best))
    val_keys = [k for k in single if k.startswith("val/")]
    test_keys = [k for k in single if k.startswith("test/")]
    assert len(val_keys) >= 10 and len(test_keys) >= 10
    for key in val_keys:  # the DDP run's validation (metrics reduced over ranks) = one process
        assert float(val_row[key]) == pytest.approx(single[key], abs=1e-5), key
    for key in test_keys:
        assert metrics[key] == pytest.approx(single[key], abs=1e-5), key
    assert metrics["optimized_metric"] == pytest.approx(single["val/macro_f1"], abs=1e-5)  # the best score


def test_multirun_of_two_ddp_jobs_makes_two_job_dirs_and_nothing_else(tmp_path, token_cache):
    logs = tmp_path / "logs"
    cmd = [sys.executable, "train.py", "-m", "trainer=ddp_cpu", "seed=1,2", "student=tiny", "logger=csv",
           "trainer.enable_model_summary=false", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
           *FAST_STUDENT, f"paths.log_dir={logs}", f"paths.cache_dir={token_cache}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    sweeps = list((logs / "student" / "multiruns").iterdir())
    assert len(sweeps) == 1 and sorted(os.listdir(logs)) == ["student"]
    assert sorted(os.listdir(logs / "student")) == ["multiruns"]  # no stray run tree from a child rank
    sweep = sweeps[0]
    assert sorted(os.listdir(sweep)) == ["0", "1", "multirun.yaml"]
    for job, seed in (("0", 1), ("1", 2)):
        names = sorted(os.listdir(sweep / job))
        assert names == [".hydra", "checkpoints", "csv", "metrics.json", "stage.json", "student.log"], names
        assert OmegaConf.load(sweep / job / ".hydra" / "config.yaml").seed == seed
        assert "test/macro_f1" in json.loads((sweep / job / "metrics.json").read_text())


# -------------------------------------------------------------------------- teacher stages on DDP
def _generate(make_cfg, tmp_path, monkeypatch, work: Path) -> None:
    from lrkd.teacher.runtime.hf import LocalHFBackend
    from tests.teacher.test_pipeline import scripted_generate

    monkeypatch.setattr(LocalHFBackend, "generate", scripted_generate)
    get_stage("teacher_generate")(make_cfg("stage=teacher_generate", "teacher=tiny", "stage.max_pairs=6",
                                           "stage.n=4", f"stage.work_dir={work}", output_dir=tmp_path / "gen"))


def test_teacher_sft_on_two_cpu_ranks_saves_once(make_cfg, tmp_path, monkeypatch):
    from lrkd.teacher.train.module import load_trained_teacher

    work = tmp_path / "work"
    _generate(make_cfg, tmp_path, monkeypatch, work)
    run = tmp_path / "run"
    cfg = make_cfg("stage=teacher_sft", "teacher=tiny", "trainer=ddp_cpu", "stage.batch_size=2", "stage.epochs=1",
                   "callbacks.progress_bar=null", f"stage.work_dir={work}", output_dir=run)
    metrics = get_stage("teacher_sft")(cfg)
    assert metrics["examples"] == 6 and metrics["reused"] is False
    assert metrics["steps"] == math.ceil(math.ceil(6 / 2) / 2)  # each rank: half the examples
    assert math.isfinite(metrics["train/loss"])
    sft = work / "sft"
    assert sorted(os.listdir(work)) == ["generations", "sft"]
    assert sorted(os.listdir(sft)) == ["examples.jsonl", "model", "stage.json"]  # checkpoints, running.json gone
    assert tree(run) <= {"csv", "csv/hparams.yaml", "csv/metrics.csv"}
    trained, _ = load_trained_teacher(cfg.teacher, sft / "model")
    base, _ = load_trained_teacher(cfg.teacher)
    moved = [not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), base.state_dict().values())]
    assert any(moved)  # the trained weights (rank 0's, handed back to this process) were saved
    again = get_stage("teacher_sft")(cfg)
    assert again["reused"] is True


def test_annotation_on_two_ranks_equals_one_process(make_cfg, tmp_path):
    from lrkd.artefact import load_artefact
    from lrkd.artefact.ranks import parts_dir

    common = ["stage=teacher_annotate", "teacher=tiny", "stage.source=base", "stage.max_pairs=7",
              "stage.batch_size=1", "stage.max_new_tokens=4", "stage.shard_size=2", "stage.splits=[train,val]"]
    out = {}
    for trainer in ("cpu", "ddp_cpu"):
        cfg = make_cfg(*common, f"trainer={trainer}", f"stage.work_dir={tmp_path / trainer}",
                       output_dir=tmp_path / f"run_{trainer}")
        metrics = get_stage("teacher_annotate")(cfg)
        assert metrics["pairs"] == 7 and metrics["written_now"] == 7 and metrics["reused"] is False
        art = Path(metrics["artefact"])
        assert sorted(os.listdir(art.parent)) == ["annotations"] and not parts_dir(art).exists()
        out[trainer] = load_artefact(art)
    one, two = out["cpu"], out["ddp_cpu"]
    assert two.manifest.complete and two.manifest.num_rows == 7 and len(two.manifest.shards) == 4  # 2+2 / 2+1
    same = lambda m: ({k: v for k, v in m.extra.items() if k != "stage_fingerprint"}, m.teacher_id)  # noqa: E731
    assert same(one.manifest) == same(two.manifest)  # (the fingerprint covers the trainer settings)
    a = {(q, i): n for n, (q, i) in enumerate(zip(one.query_ids, one.item_ids))}
    b = [a[(q, i)] for q, i in zip(two.query_ids, two.item_ids)]
    assert sorted(b) == list(range(7))
    np.testing.assert_array_equal(two.soft_labels, one.soft_labels[b])
    np.testing.assert_array_equal(two.latents, one.latents[b])
    for p in one.perspectives:
        assert list(two.rationales[p]) == [one.rationales[p][j] for j in b]


# ------------------------------------------------------------------------------------- DeepSpeed
@pytest.mark.parametrize("name", sorted(ZERO))
def test_deepspeed_config_builds_the_intended_zero_section(make_cfg, name):
    pytest.importorskip("deepspeed")
    from lightning.pytorch.strategies import DeepSpeedStrategy

    stage, offload = ZERO[name]
    cfg = make_cfg(f"trainer={name}")
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, DeepSpeedStrategy)
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == stage
    if offload:
        assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    else:
        assert "offload_optimizer" not in zero and "offload_param" not in zero


def _tiny_student_hparams(cfg) -> dict:
    from lrkd.schema import DataSpec, LabelSet

    spec = DataSpec(label_set=LabelSet.from_config(cfg.data.labels), perspectives=tuple(cfg.perspectives))
    plain = lambda node: OmegaConf.to_container(node, resolve=True)  # noqa: E731
    return {"encoder": plain(cfg.student), "extractor": plain(cfg.extractor), "loss": plain(cfg.loss),
            "optimizer": plain(cfg.optimizer),
            "data_spec": {**spec.to_dict(), "max_length": int(cfg.data.max_length), "text_fields": []}}


def _zero_rank(rank: int, world: int, port: int, ds_config: dict, hparams: dict, out: str) -> None:
    """One rank of a ZeRO run on gloo: initialize, 2 steps, a Lightning-style ZeRO checkpoint, and
    (rank 0) the whole weights for comparison."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import deepspeed
    import deepspeed.ops

    from lrkd.student.module import StudentModule

    # DeepSpeed's shared-memory all-reduce is an inference shortcut on the CPU that ZeRO does not
    # use; building its C++ op takes ~45 s on first use, so it is left out here
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    model = StudentModule(**hparams)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), 1e-3),
                                                   config=ds_config)
    stage = ds_config["zero_optimization"]["stage"]
    assert engine.zero_optimization_stage() == stage
    if stage == 3:  # the parameters themselves are split: each rank holds half of the big ones
        big = [p for p in model.parameters() if p.ds_numel >= 1024]
        assert big and all(p.ds_tensor.numel() == math.ceil(p.ds_numel / world) for p in big)
    else:  # optimizer states split across the 2 ranks
        assert optimizer.partition_count == [world] * len(optimizer.partition_count)
    g = torch.Generator().manual_seed(rank)
    for _ in range(2):
        batch = {"input_ids": torch.randint(1000, 2000, (4, 12), generator=g),
                 "attention_mask": torch.ones(4, 12, dtype=torch.long),
                 "token_type_ids": torch.zeros(4, 12, dtype=torch.long), "labels": torch.tensor([0, 1, 2, 3])}
        loss = torch.nn.functional.cross_entropy(engine(batch)["logits"], batch["labels"])
        engine.backward(loss)
        engine.step()
    # what Lightning's DeepSpeedStrategy.save_checkpoint writes: its checkpoint less the weights
    # and optimizer states as DeepSpeed's client state, tag "checkpoint"
    client = {"epoch": 0, "global_step": 2, "pytorch-lightning_version": L.__version__,
              "hyper_parameters": dict(model.hparams), "hparams_name": "kwargs"}
    engine.save_checkpoint(os.path.join(out, "zero.ckpt"), client_state=client, tag="checkpoint")
    gather = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None) if stage == 3 \
        else nullcontext()
    with gather:
        if rank == 0:
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, os.path.join(out, "full.pt"))


@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3"])
def test_zero_on_gloo_then_the_checkpoint_converts_to_one_fp32_file(make_cfg, tmp_path, name):
    pytest.importorskip("deepspeed")
    import torch.multiprocessing as mp
    from lightning.fabric.plugins.environments.lightning import find_free_network_port

    from lrkd.serve.scorers import load_served
    from lrkd.student.module import StudentModule
    from lrkd.lightning.deepspeed import main as zero_to_fp32

    cfg = make_cfg(f"trainer={name}")
    ds_config = dict(instantiate(cfg.trainer.strategy).config)  # the config Lightning would hand DeepSpeed
    ds_config.update(train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=1,
                     gradient_clipping=float(cfg.trainer.gradient_clip_val))
    mp.start_processes(_zero_rank, args=(2, find_free_network_port(), ds_config, _tiny_student_hparams(cfg),
                                         str(tmp_path)), nprocs=2, start_method="fork")

    ckpt_dir = tmp_path / "zero.ckpt"
    assert (ckpt_dir / "latest").is_file() and len(list((ckpt_dir / "checkpoint").glob("*optim_states.pt"))) == 2
    assert zero_to_fp32([str(ckpt_dir)]) == 0
    converted = tmp_path / "zero.fp32.ckpt"
    full = torch.load(tmp_path / "full.pt", weights_only=True)
    module = StudentModule.load_from_checkpoint(converted, weights_only=True, map_location="cpu")
    state = module.state_dict()
    assert set(state) == set(full)
    for key, value in full.items():
        assert state[key].dtype == torch.float32 and torch.equal(state[key], value), key
    served, serving = load_served(converted)  # predict and export read it too
    assert serving.max_length == 64 and torch.equal(served.classifier[1].weight, full["student.classifier.1.weight"])


def test_ranked_writer_merges_the_parts_once_and_resumes(tmp_path):
    """The merge logic without processes: two ranks' writers driven in turn (barriers no-ops)."""
    from lrkd.artefact import ArtefactWriter, load_artefact
    from lrkd.artefact.ranks import RankedArtefactWriter, parts_dir
    from lrkd.lightning.distributed import Ranks

    class TurnTaking(Ranks):
        def barrier(self) -> None:
            pass

    kw = dict(teacher_id="t", perspectives=["a", "b"], label_names=["x", "y"], vector_dim=2,
              dataset_fingerprint="fp", extra={"stage_fingerprint": "s1"})
    root = tmp_path / "annotations"

    def shard(writer, shard_id, keys):
        n = len(keys)
        writer.write_shard(shard_id, [q for q, _ in keys], [i for _, i in keys],
                           {"a": [f"a {k}" for k in keys], "b": [f"b {k}" for k in keys]},
                           np.full((n, 2), 0.5), np.ones((n, 2, 2)))

    k = [(f"q{j}", f"i{j}") for j in range(5)]
    shard(ArtefactWriter(root, **kw), 0, k[:2])  # a merge that was killed half-way
    shard(ArtefactWriter(parts_dir(root) / "rank-00001", **kw), 0, k[1:3])  # a killed rank's part
    stale = parts_dir(root) / "rank-00003"
    shard(ArtefactWriter(stale, **{**kw, "extra": {"stage_fingerprint": "old"}}), 0, [("q9", "i9")])

    w0 = RankedArtefactWriter(root, TurnTaking(0, 2), **kw)
    w1 = RankedArtefactWriter(root, TurnTaking(1, 2), **kw)
    assert not stale.exists()  # written with other settings: removed, not merged
    assert set(k[:3]) <= w0.completed_keys() and set(k[:3]) <= w1.completed_keys()
    shard(w0, max(w0.completed_shards(), default=-1) + 1, k[3:4])
    shard(w1, max(w1.completed_shards(), default=-1) + 1, k[4:5])
    w1.finalize()
    manifest = w0.finalize()
    assert manifest.complete and manifest.num_rows == 5 and not parts_dir(root).exists()
    art = load_artefact(root)
    assert sorted(zip(art.query_ids, art.item_ids)) == k  # every pair once
