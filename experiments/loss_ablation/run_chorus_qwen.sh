#!/usr/bin/env bash
# The chorus_icecat study with the Qwen2.5-Coder-1.5B teacher, as run for the README's table:
#   bash experiments/loss_ablation/run_chorus_qwen.sh [seeds...]
# 1. the teacher reads val, test and train (resuming the shipped readings) and writes the artefact;
# 2. the plain cross-encoder and the distilled student, 2 epochs, one multirun each over the seeds;
# 3. the report.
set -euo pipefail
SEEDS=$(echo ${*:-1 2 3} | tr ' ' ',')
PY=${PYTHON:-python}
ART=artefacts/chorus_icecat/qwen2.5-coder-1.5b/score_annotations
$PY train.py experiment=qwen_teacher
$PY train.py -m loss=ce extractor=none data.annotations=null trainer.max_epochs=2 seed=$SEEDS \
    callbacks.progress_bar=null hydra.sweep.dir=logs/teacher_study/ce_none
$PY train.py -m loss=kd extractor=none data.annotations=$ART trainer.max_epochs=2 seed=$SEEDS \
    callbacks.progress_bar=null hydra.sweep.dir=logs/teacher_study/kd_none
$PY -m lrkd.report logs/teacher_study/ce_none logs/teacher_study/kd_none \
    --metrics test/macro_f1 test/qwk test/auc test/ndcg@10 val/macro_f1 val/qwk val/auc \
    --out experiments/loss_ablation/report_chorus_qwen
