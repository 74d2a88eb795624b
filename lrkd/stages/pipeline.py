"""The pipeline stage (``experiment=pipeline``): every stage of the method in order, in one process.

    [teacher_dapt] -> teacher_generate -> teacher_sft -> [teacher_reward] -> teacher_dpo -> teacher_annotate -> student

teacher_dapt runs when ``stage.dapt.enabled``; then the sub-stages whose ``init_from`` is ``auto``
(generate, sft) start from the DAPT model, else from the base teacher. teacher_reward runs when
``stage.dpo.pairs=reward`` (DPO trains on its pairs) or ``stage.reward.enabled``.

Each sub-stage runs with ``cfg.stage`` = its own node of the pipeline config (``stage.generate``,
``stage.sft``, ``stage.dpo``, ``stage.annotate``, ``stage.student``; resolved against the
pipeline's config first) and writes its run outputs (logs, checkpoints of the student) under
``<output_dir>/<key>/``. The teacher stages share ``stage.work_dir`` and skip themselves when their
fingerprint is unchanged; the student reads the artefact (``data.annotations`` is set to it).
``<output_dir>/metrics.json`` holds every stage's metrics.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lrkd.lightning.distributed import is_rank_zero
from lrkd.run.jobs import METRICS_FILE, run_stage
from lrkd.stages import get_stage
from lrkd.utils import write_text_atomic

log = logging.getLogger(__name__)

# (key in the pipeline config, stage name), in running order
STEPS = (("dapt", "teacher_dapt"), ("generate", "teacher_generate"), ("sft", "teacher_sft"),
         ("reward", "teacher_reward"), ("dpo", "teacher_dpo"), ("annotate", "teacher_annotate"), ("student", "student"))
OPTIONAL = ("dapt", "reward")  # steps that run only when asked for (see :func:`enabled`)


def enabled(cfg: DictConfig, key: str) -> bool:
    """Whether the pipeline runs step ``key``: the optional ones only when enabled (reward also when
    DPO reads its pairs); a step without a node in the pipeline config is skipped."""
    if key not in cfg.stage:
        if key in OPTIONAL:
            return False
        raise KeyError(f"the pipeline config has no stage.{key} (expected keys {[k for k, _ in STEPS]})")
    if key == "dapt":
        return bool(cfg.stage.dapt.get("enabled", False))
    if key == "reward":
        return bool(cfg.stage.reward.get("enabled", False)) or str(cfg.stage.dpo.get("pairs", "conflict")) == "reward"
    return True


def init_from(cfg: DictConfig, key: str) -> str | None:
    """``dapt`` or ``base`` for a sub-stage whose ``init_from`` is ``auto`` (None: leave it)."""
    value = cfg.stage[key].get("init_from") if key in cfg.stage else None
    if value != "auto":
        return None
    return "dapt" if enabled(cfg, "dapt") else "base"


def sub_stage_config(cfg: DictConfig, key: str, output_dir: Path, **overrides) -> DictConfig:
    """The full config of one sub-stage: ``cfg`` with ``stage`` = the resolved ``cfg.stage[key]``,
    ``paths.output_dir`` = ``output_dir``, and dotted-key ``overrides`` (e.g. data.annotations)."""
    if key not in cfg.stage:
        raise KeyError(f"the pipeline config has no stage.{key} (expected keys {[k for k, _ in STEPS]})")
    sub = OmegaConf.to_container(cfg.stage[key], resolve=True)
    whole = OmegaConf.to_container(cfg, resolve=False)
    whole["stage"] = sub
    out = OmegaConf.create(whole)
    OmegaConf.update(out, "paths.output_dir", str(output_dir), merge=False)
    for dotted, value in overrides.items():
        OmegaConf.update(out, dotted, value, merge=False)
    return out


def run_pipeline(cfg: DictConfig) -> dict:
    """Run (or reuse) every stage; returns ``{"<key>/<metric>": value}``, ``reused/<key>`` flags and
    the student's ``optimized_metric``."""
    started = time.time()
    output_dir = Path(str(cfg.paths.output_dir))
    results: dict[str, dict] = {}
    artefact = None
    for key, stage in STEPS:
        if not enabled(cfg, key):
            continue
        overrides = {"data.annotations": artefact} if stage == "student" else {}
        if (source := init_from(cfg, key)) is not None:
            overrides["stage.init_from"] = source
        sub = sub_stage_config(cfg, key, output_dir / key, **overrides)
        if sub.stage.name != stage:
            raise ValueError(f"stage.{key} must configure the {stage} stage, got name={sub.stage.name!r}")
        log.info("pipeline: %s (%s)", key, stage)
        t0 = time.time()
        results[key] = dict(run_stage(get_stage(stage), sub))  # its W&B run ends with it
        results[key].setdefault("wall_time_s", round(time.time() - t0, 1))
        if stage == "teacher_annotate":
            artefact = results[key]["artefact"]
    summary = {"stages": results, "artefact": artefact, "work_dir": str(cfg.stage.work_dir),
               "wall_time_s": round(time.time() - started, 1)}

    if is_rank_zero():  # under DDP / DeepSpeed every rank runs the pipeline; rank 0 writes
        write_text_atomic(output_dir / METRICS_FILE, json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
        lines = [f"pipeline ({summary['wall_time_s']} s) -> {output_dir / 'metrics.json'}"]
        lines += [f"  {key:<9} {'reused' if r.get('reused') else 'ran':<6} {r.get('wall_time_s', '')}"
                  for key, r in results.items()]
        print("\n".join(lines), flush=True)
    flat = {f"{key}/{k}": v for key, r in results.items() for k, v in r.items()
            if isinstance(v, (int, float, bool)) and k != "optimized_metric"}
    flat.update({f"reused/{key}": bool(r.get("reused", False)) for key, r in results.items()})
    flat["optimized_metric"] = results["student"].get("optimized_metric")
    return flat


run = run_pipeline
