#!/usr/bin/env bash
# The chorus_icecat study with the Qwen2.5-Coder-1.5B teacher, as run for the README's table:
#   bash experiments/loss_ablation/run_chorus_qwen.sh [seeds...]
# 1. the teacher reads val, test, train and the retrieved pool (BM25 top-10 over the Icecat
#    catalogue for each train query; resuming the shipped readings) and writes the artefact;
# 2. the students, 2 epochs, thresholds tuned on val for QWK (decision=thresholds; the argmax
#    metrics of the same checkpoint are logged beside them), one multirun each over the seeds:
#    the plain cross-encoder, kd on the train split and the pool, ordinal, and ordinal + kd + pool
#    (as run for the README: two jobs side by side with OMP_NUM_THREADS=1, code of commit 239f00e);
# 3. the report.
set -euo pipefail
SEEDS=$(echo ${*:-1 2 3} | tr ' ' ',')
PY=${PYTHON:-python}
ART=artefacts/chorus_icecat/qwen2.5-coder-1.5b/score_annotations
POOL=+data.pool.catalogue=datasets/chorus_icecat/catalogue.parquet
COMMON=(extractor=none trainer.max_epochs=2 seed=$SEEDS callbacks.progress_bar=null
        decision=thresholds decision.metric=qwk callbacks.model_checkpoint.monitor=val/tuned/qwk)
$PY train.py experiment=qwen_teacher $POOL
$PY train.py -m loss=ce data.annotations=null "${COMMON[@]}" hydra.sweep.dir=logs/teacher_study/ce_none
$PY train.py -m loss=kd data.annotations=$ART $POOL "${COMMON[@]}" hydra.sweep.dir=logs/teacher_study/kd_pool_none
$PY train.py -m loss=ordinal data.annotations=null "${COMMON[@]}" hydra.sweep.dir=logs/teacher_study/ordinal_none
$PY train.py -m loss=ordinal '+loss.terms.kd={_target_: lrkd.losses.KDTerm, weight: 1.0, temperature: 2.0}' \
    data.annotations=$ART $POOL "${COMMON[@]}" hydra.sweep.dir=logs/teacher_study/ordinal_kd_pool_none
$PY experiments/graded_decisions/crossfit_val.py logs/teacher_study/*_none    # the val columns
$PY -m lrkd.report logs/teacher_study/ce_none logs/teacher_study/kd_pool_none \
    logs/teacher_study/ordinal_none logs/teacher_study/ordinal_kd_pool_none \
    --metrics test/macro_f1 test/qwk test/tuned/macro_f1 test/tuned/qwk test/auc test/ndcg@10 \
              val/tuned/macro_f1 val/tuned/qwk val/auc \
    --out experiments/loss_ablation/report_chorus_qwen
