#!/usr/bin/env bash
# The label-budget study end to end (issue 22), chorus_icecat with the Qwen2.5-Coder-1.5B teacher:
#   bash experiments/label_budget/run.sh [seeds]      # seeds: 1 by default (one (fold, seed) replicate per fold)
# 1. the teacher reads every labelled pair and the BM25 pool of every query (resumes the shipped readings;
#    only the pool pairs of queries outside the default train split are new);
# 2. a teacher head per (fold, seed, budget), fitted on that budget's gold train pairs only (seconds each);
# 3. the 40 students (4 budgets x 5 folds x 2 arms per seed), then the paired report.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python}
SEEDS=$(echo ${*:-1} | tr ' ' ',')
POOL=+data.pool.catalogue=datasets/chorus_icecat/catalogue.parquet
for f in 0 1 2 3 4; do
  $PY train.py experiment=qwen_teacher stage.workers=1 'stage.splits=[train]' stage.read_only=true \
      data.split.folds=5 data.split.fold=$f $POOL hydra.run.dir=logs/label_budget/reads/f$f
done
$PY train.py -m stage=teacher_head teacher=qwen2.5-coder-1.5b data.annotations=null $POOL data.split.folds=5 \
    data.split.fold=0,1,2,3,4 data.gold.fraction=0.1,0.25,0.5,1.0 seed=$SEEDS hydra.sweep.dir=logs/label_budget/heads
$PY train.py -m experiment=label_budget seed=$SEEDS hydra.sweep.dir=logs/label_budget/students
lrkd report logs/label_budget/students --label-budget --out experiments/label_budget
