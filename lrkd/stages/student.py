"""The student stage: fit the student on the train split, pick the best checkpoint on validation,
test it, and write ``metrics.json`` into the run directory."""
from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lrkd.artefact import read_manifest
from lrkd.lightning.distributed import best_model_score, sync_loggers_after_spawned_fit
from lrkd.stages.base import StageRun, instantiate_group, without_logger_callbacks
from lrkd.student.module import StudentModule
from lrkd.run.jobs import METRICS_FILE
from lrkd.run.wandb_run import apply_wandb_identity, log_test_extras
from lrkd.lightning.deepspeed import convert as zero_to_fp32, is_zero_checkpoint
from lrkd.utils import write_text_atomic

log = logging.getLogger(__name__)


class TeacherBelowBaselineWarning(UserWarning):
    """The artefact's teacher scored below the student's own CE baseline on the test split."""


def teacher_quality_gate(teacher_test: dict | None, baseline: dict | None, metrics) -> list[str]:
    """The metrics on which the teacher (``teacher_test``: its test figures, recorded in the
    artefact's manifest by the teacher stage) scored below the plain cross-encoder's ``baseline``,
    as messages; [] when it did not, or when either figure is missing."""
    if not teacher_test or not baseline:
        return []
    out = []
    for name in metrics:
        t, b = teacher_test.get(name), baseline.get(name)
        if t is not None and b is not None and float(t) < float(b):
            out.append(f"{name} {float(t):.3f} < {float(b):.3f}")
    return out


def _eval_figures(metrics: dict | None, name: str) -> dict:
    """``{"auc": ..., ...}`` from a stage's ``eval/<name>/<metric>`` entries."""
    prefix = f"eval/{name}/"
    return {key[len(prefix):]: value for key, value in (metrics or {}).items()
            if key.startswith(prefix) and "/" not in key[len(prefix):]}


def recorded_teacher_test(annotations: str | Path) -> dict | None:
    """The annotating teacher's test figures (``{"auc": ..., "qwk": ..., ...}``) as its stages recorded
    them, first found of: ``extra.teacher_test`` of the manifest (stage=teacher_score); the
    ``eval/annotate_<source>/*`` metrics of the artefact's ``stage.json`` (stage=teacher_annotate scores
    the teacher after the artefact is final); in a shipped artefact's ``PROVENANCE.json``, those of its
    ``teacher_annotate`` entry, else the ``eval/<source>/*`` of the stage that trained the annotating
    model (``teacher_dpo`` for source ``dpo``). None when there are none."""
    root = Path(annotations)
    extra = read_manifest(root).extra
    if extra.get("teacher_test"):
        return dict(extra["teacher_test"])
    source = str(extra.get("source", "dpo"))
    stage = root / "stage.json"
    if stage.is_file() and (found := _eval_figures(json.loads(stage.read_text(encoding="utf-8")).get("metrics"),
                                                   f"annotate_{source}")):
        return found
    provenance = root / "PROVENANCE.json"
    if provenance.is_file():
        stages = json.loads(provenance.read_text(encoding="utf-8")).get("stages") or {}
        for stage_name, name in (("teacher_annotate", f"annotate_{source}"), (f"teacher_{source}", source)):
            if found := _eval_figures((stages.get(stage_name) or {}).get("metrics"), name):
                return found
    return None


def check_teacher(cfg: DictConfig, datamodule, loss) -> list[str]:
    """``stage.quality_gate``: warn, before training, when a loss reads a teacher that scored below
    the student's own CE baseline on this dataset's test split (the figures the teacher stage
    recorded: :func:`recorded_teacher_test`). Returns the failing comparisons."""
    gate = cfg.stage.get("quality_gate")
    if not gate or not loss.needs_annotations or not datamodule.annotations:
        return []
    baselines = OmegaConf.to_container(gate.get("baselines") or {}, resolve=True)
    failing = teacher_quality_gate(recorded_teacher_test(datamodule.annotations), baselines.get(str(cfg.data.name)),
                                   list(gate.get("metrics") or []))
    if failing:
        message = (f"the teacher of {datamodule.annotations} scored below the plain cross-encoder "
                   f"(loss=ce extractor=none) on the {cfg.data.name} test split: {', '.join(failing)}. "
                   f"Distilling it may cost the student; see stage.quality_gate.")
        log.warning(message)
        warnings.warn(message, TeacherBelowBaselineWarning, stacklevel=2)
    return failing


def build_teacher_artefact(cfg: DictConfig) -> None:
    """``teacher_artefact`` (a config callable, e.g. :class:`lrkd.teacher.label.head_artefact.HeadArtefact`):
    when ``data.annotations`` names a folder that does not exist yet, build it from this job's own data
    (its split, budget and pool; no artefact attached) before the student reads it."""
    builder, path = cfg.get("teacher_artefact"), cfg.data.get("annotations")
    if builder is None or not path or Path(str(path)).exists():
        return
    plain_data = instantiate(cfg.data, seed=cfg.seed, annotations=None, _recursive_=False)
    plain_data.setup("fit")
    instantiate(builder)(plain_data, str(path), perspectives=list(cfg.data.perspectives), seed=int(cfg.seed))


def run_student(cfg: DictConfig) -> dict:
    """Fit, test the best checkpoint, write metrics.json. Returns the test metrics (flat keys) and
    ``cfg.optimized_metric``'s value under the key ``optimized_metric`` when it is set."""
    output_dir = Path(cfg.paths.output_dir)
    # the student's folder is its Hydra run dir: a fresh one each run, so never reused; resumed by ckpt_path
    run = StageRun(cfg, "student", output_dir, {k: v for k, v in cfg.items() if k != "paths"})
    run.start()

    loss = instantiate(cfg.loss)  # cheap: tells the data module whether to build the augmented view
    build_teacher_artefact(cfg)
    datamodule = instantiate(cfg.data, with_augmented_view=bool(loss.needs_augmented_view), seed=cfg.seed,
                             _recursive_=False)
    datamodule.setup("fit")
    if loss.needs_annotations and not datamodule.spec.has_annotations:
        raise ValueError(f"loss terms {sorted(loss.active_terms)} need a teacher artefact: "
                         "set data.annotations=<artefact dir> (or use loss=ce)")
    check_teacher(cfg, datamodule, loss)

    # the training max_length and item-text fields travel with the checkpoint, so predict and
    # export build the model input exactly as training did
    data_spec = {**datamodule.spec.to_dict(), "max_length": int(cfg.data.max_length),
                 "text_fields": list(datamodule.frame.attrs.get("text_fields", []))}
    # the train split's gold label counts, for class_weight: balanced loss terms (lrkd.losses.weights)
    data_spec["train_class_counts"] = datamodule.class_counts("train")
    model = StudentModule(encoder=cfg.student, extractor=cfg.extractor, loss=cfg.loss,
                          optimizer=cfg.optimizer, scheduler=cfg.get("scheduler"), data_spec=data_spec,
                          decision=cfg.get("decision"))
    counts = model.parameter_counts()
    log.info("parameters: %s", counts)

    apply_wandb_identity(cfg)  # W&B: group = the sweep, name and tags = the job's overrides
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = without_logger_callbacks(instantiate_group(cfg.get("callbacks")), loggers)
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in trainer.loggers:
        lg.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True),
                            **{f"params/{k}": v for k, v in counts.items()}})

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
    # the last validation's metrics: trainer.test() clears callback_metrics
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if not ckpt:
        log.warning("no best checkpoint (no validation ran?): testing the weights in memory")
    sync_loggers_after_spawned_fit(trainer)
    trainer.test(model, datamodule=datamodule, ckpt_path=ckpt or None, weights_only=True)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    if trainer.is_global_zero:
        log_test_extras(trainer.loggers, getattr(model, "test_confusion", None), metrics,
                        datamodule.spec.label_set.names)
    # val/*: the last validation (for choosing presets on val, never on test)
    result = {**val, **metrics, **{f"params/{k}": v for k, v in counts.items()},
              "best_checkpoint": ckpt, "wall_time_s": round(time.time() - run.started, 1)}
    rule = model.decision_rule()
    if rule.kind != "argmax":  # the rule test/tuned/* used: the best checkpoint's, fitted on val
        result["decision"] = rule.to_dict()
    if cfg.get("optimized_metric"):
        key = cfg.optimized_metric
        best = trainer.checkpoint_callback
        score = best_model_score(best) if best is not None and best.monitor == key else None
        if score is not None:
            result["optimized_metric"] = score  # the tested checkpoint's score
        else:
            result["optimized_metric"] = {**val, **metrics}.get(key)
    if trainer.is_global_zero:
        if ckpt and is_zero_checkpoint(ckpt):  # DeepSpeed: one fp32 file for predict and export
            result["best_checkpoint_fp32"] = str(zero_to_fp32(ckpt))
        write_text_atomic(output_dir / METRICS_FILE, json.dumps(result, indent=2, sort_keys=True))
        run.record(metrics)
        print_metrics(metrics, title=f"test metrics ({cfg.data.name}, extractor="
                      f"{cfg.extractor._target_.rsplit('.', 1)[-1]}, loss terms {sorted(loss.active_terms)})")
    return result


def print_metrics(metrics: dict, title: str = "metrics") -> None:
    """A small aligned table on stdout."""
    if not metrics:
        return
    width = max(len(k) for k in metrics)
    lines = [title] + [f"  {k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())]
    print("\n".join(lines), flush=True)


run = run_student
