#!/usr/bin/env bash
# Distil only where no gold grade exists (issue 11): the default student (loss=ordinal, extractor=none)
# plus kd on the transfer pool's rows alone (loss.terms.kd.rows=unlabelled), all 793 pool pairs;
# settings as run_chorus_qwen.sh.
#   bash experiments/loss_ablation/run_chorus_qwen_pool_kd.sh [seeds...]
set -euo pipefail
source "$(dirname "$0")/chorus_qwen_settings.sh"
[ -f $ART/stage.json ] || $PY train.py experiment=qwen_teacher $POOL stage.read=false
$PY train.py -m loss=ordinal '+loss.terms.kd={_target_: lrkd.losses.KDTerm, weight: 1.0, temperature: 2.0, rows: unlabelled}' \
    extractor=none data.annotations=$ART $POOL "${COMMON[@]}" hydra.sweep.dir=logs/teacher_study/ordinal_kdunl_pool_none
