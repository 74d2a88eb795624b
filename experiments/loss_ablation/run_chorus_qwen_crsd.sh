#!/usr/bin/env bash
# The rows that read the teacher's rationales (crsd, full; mlp extractor) of the chorus_icecat study
# with the Qwen2.5-Coder-1.5B teacher (issue 11):
#   bash experiments/loss_ablation/run_chorus_qwen_crsd.sh [seeds...]
# 1. the rationales: MPCoT generation for a seeded subset of the labelled train pairs, resuming the
#    ones shipped in datasets/chorus_icecat/teacher_reads/qwen2.5-coder-1.5b/rationales (about 20 s
#    per pair on a quiet core; run it for as long as the CPU allows, kill it, run it again later):
#      python train.py experiment=qwen_teacher stage.workers=1 stage.rationales.max_pairs=2575 stage.read_only=true
# 2. the artefact with whatever rationales there are (rows without one stay out of crsd: has_rationale);
# 3. the students, as run_chorus_qwen_mlp.sh.
set -euo pipefail
source "$(dirname "$0")/chorus_qwen_settings.sh"
$PY train.py experiment=qwen_teacher $POOL stage.read=false
$PY train.py -m loss=crsd extractor=mlp data.annotations=$ART $POOL "${COMMON[@]}" hydra.sweep.dir=logs/teacher_study/crsd_pool_mlp
$PY train.py -m loss=full extractor=mlp data.annotations=$ART $POOL "${COMMON[@]}" hydra.sweep.dir=logs/teacher_study/full_pool_mlp
