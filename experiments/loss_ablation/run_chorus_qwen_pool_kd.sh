#!/usr/bin/env bash
# Distil only where no gold grade exists (issue 11): the default student (loss=ordinal, extractor=none)
# plus kd on the transfer pool's rows alone (loss.terms.kd.rows=unlabelled), all 793 pool pairs;
# settings as run_chorus_qwen.sh.
#   bash experiments/loss_ablation/run_chorus_qwen_pool_kd.sh [seeds...]
set -euo pipefail
SEEDS=$(echo ${*:-1 2 3} | tr ' ' ',')
PY=${PYTHON:-python}
ART=artefacts/chorus_icecat/qwen2.5-coder-1.5b/score_annotations
POOL=+data.pool.catalogue=datasets/chorus_icecat/catalogue.parquet
COMMON=(trainer.max_epochs=2 seed=$SEEDS callbacks.progress_bar=null logger=csv extractor=none
        decision=thresholds decision.metric=qwk callbacks.model_checkpoint.monitor=val/tuned/qwk)
[ -f $ART/stage.json ] || $PY train.py experiment=qwen_teacher $POOL stage.read=false
$PY train.py -m loss=ordinal '+loss.terms.kd={_target_: lrkd.losses.KDTerm, weight: 1.0, temperature: 2.0, rows: unlabelled}' \
    data.annotations=$ART $POOL "${COMMON[@]}" hydra.sweep.dir=logs/teacher_study/ordinal_kdunl_pool_none
