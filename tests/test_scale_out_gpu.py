"""Scale-out on CUDA GPUs (issue 4): the student and the teacher's SFT fit under ``trainer=ddp`` and
each DeepSpeed config; a ZeRO run's best checkpoint is converted to one fp32 file that the
serving loader reads. Skipped without a GPU (and deselected by default: ``pytest -m gpu``).

In pytest the fits use one GPU (``trainer.devices=1``): DeepSpeed and plain DDP start ranks > 0 by
re-running the script, which must be ``train.py``, not pytest. The multi-GPU case runs
``train.py`` in a subprocess (needs 2 GPUs or more)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lrkd.stages import get_stage

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
TRAINERS = ("ddp", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload")
FAST = ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2", "data.batch_size=8", "callbacks.progress_bar=null"]


def _needs(trainer: str) -> None:
    if trainer.startswith("deepspeed"):
        pytest.importorskip("deepspeed")


@pytest.mark.parametrize("trainer", TRAINERS)
def test_student_fits_and_tests(make_cfg, tmp_path, trainer):
    _needs(trainer)
    from lrkd.serve.scorers import load_served

    run = tmp_path / "run"
    result = get_stage("student")(make_cfg(f"trainer={trainer}", "trainer.devices=1", *FAST, output_dir=run))
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test/macro_f1"] <= 1.0
    if trainer.startswith("deepspeed"):
        fp32 = Path(result["best_checkpoint_fp32"])
        assert Path(result["best_checkpoint"]).is_dir() and fp32.is_file()
        module, serving = load_served(fp32)
        assert serving.max_length == 64 and all(p.dtype == torch.float32 for p in module.parameters())


@pytest.mark.parametrize("trainer", TRAINERS)
def test_teacher_sft_fits_and_saves_whole_weights(make_cfg, tmp_path, monkeypatch, trainer):
    _needs(trainer)
    from lrkd.teacher.runtime.hf import LocalHFBackend
    from lrkd.teacher.train.module import load_trained_teacher
    from tests.teacher.test_pipeline import scripted_generate

    monkeypatch.setattr(LocalHFBackend, "generate", scripted_generate)
    work = tmp_path / "work"
    get_stage("teacher_generate")(make_cfg("stage=teacher_generate", "teacher=tiny", "stage.max_pairs=6", "stage.n=4",
                                           f"stage.work_dir={work}", output_dir=tmp_path / "gen"))
    cfg = make_cfg("stage=teacher_sft", "teacher=tiny", f"trainer={trainer}", "trainer.devices=1",
                   "stage.batch_size=2", "stage.epochs=1", "callbacks.progress_bar=null", f"stage.work_dir={work}",
                   output_dir=tmp_path / "run")
    metrics = get_stage("teacher_sft")(cfg)
    assert metrics["steps"] == 3 and metrics["reused"] is False
    trained, _ = load_trained_teacher(cfg.teacher, work / "sft" / "model")
    base, _ = load_trained_teacher(cfg.teacher)
    for (name, a), b in zip(trained.state_dict().items(), base.state_dict().values()):
        assert a.shape == b.shape, name  # whole tensors, not ZeRO-3 partitions
    assert any(not torch.equal(a.float(), b.float()) for a, b in zip(trained.state_dict().values(),
                                                                      base.state_dict().values()))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs or more")
@pytest.mark.parametrize("trainer", ("ddp", "deepspeed_zero2", "deepspeed_zero3"))
def test_student_on_every_gpu_through_train_py(tmp_path, token_cache, trainer):
    _needs(trainer)
    logs = tmp_path / "logs"
    cmd = [sys.executable, "train.py", f"trainer={trainer}", "student=tiny", "logger=csv", *FAST,
           f"paths.log_dir={logs}", f"paths.cache_dir={token_cache}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((logs / "student" / "runs").iterdir())
    assert len(runs) == 1, runs  # the re-run ranks wrote into rank 0's run directory
    assert "test/macro_f1" in json.loads((runs[0] / "metrics.json").read_text())
