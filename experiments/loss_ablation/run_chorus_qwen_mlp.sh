#!/usr/bin/env bash
# The mlp-extractor rows of the chorus_icecat study with the Qwen2.5-Coder-1.5B teacher (issue 11):
#   bash experiments/loss_ablation/run_chorus_qwen_mlp.sh [seeds...]
# Same settings as run_chorus_qwen.sh (2 epochs, thresholds tuned on val for QWK, checkpoint on
# val/tuned/qwk), the teacher's labels on the train split and on all 793 pool pairs (BM25 top-10
# over the Icecat catalogue for each train query). crsd and full need rationales: see
# run_chorus_qwen_crsd.sh. As run: one job at a time, OMP_NUM_THREADS=1, beside the rationale reader.
set -euo pipefail
source "$(dirname "$0")/chorus_qwen_settings.sh"
[ -f $ART/stage.json ] || $PY train.py experiment=qwen_teacher $POOL stage.read=false
$PY train.py -m loss=latent extractor=mlp data.annotations=$ART $POOL "${COMMON[@]}" hydra.sweep.dir=logs/teacher_study/latent_pool_mlp
$PY train.py -m loss=kd extractor=mlp data.annotations=$ART $POOL "${COMMON[@]}" hydra.sweep.dir=logs/teacher_study/kd_pool_mlp
$PY train.py -m loss=ce extractor=mlp data.annotations=null "${COMMON[@]}" hydra.sweep.dir=logs/teacher_study/ce_mlp
$PY train.py -m loss=kd extractor=none data.annotations=$ART $POOL "${COMMON[@]}" hydra.sweep.dir=logs/teacher_study/kd_pool793_none
