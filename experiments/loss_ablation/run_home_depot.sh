#!/usr/bin/env bash
# The home_depot loss ablation, end to end, as it was run for report_home_depot/ (2-core CPU sizes):
#   bash experiments/loss_ablation/run_home_depot.sh /path/to/home_depot/train.csv.zip [seeds...]
# 1. the teacher pipeline on 20,006 pairs (whole queries): MPCoT generation on 64 train pairs, SFT,
#    DPO, then annotation of 1,024 train pairs (calibrated soft labels, hidden-state latents);
# 2. the loss sweep (ce, kd, crsd, latent, full), one multirun per seed, 1 epoch, bf16 autocast;
# 3. the report over every seed's multirun.
# Each step is reused or resumed when run again (stage fingerprints, Hydra job dirs).
set -euo pipefail
DATA_PATH=${1:?give the path of the Home Depot train.csv(.zip)}
shift || true
SEEDS=${*:-1 2 3}
PY=${PYTHON:-python}
HD="data=home_depot data.path=$DATA_PATH data.max_pairs=20000"
WORK=artefacts/home_depot/smollm2-135m-instruct

# The pipeline's own student stage is not needed here: stop after annotation.
$PY train.py experiment=pipeline $HD stage.generate.max_pairs=64 stage.annotate.max_pairs=1024 \
    stage.annotate.eval_max_pairs=128 hydra.run.dir=logs/loss_ablation/home_depot_teacher &
PIPELINE=$!
until [ -f $WORK/annotations/stage.json ] || ! kill -0 $PIPELINE 2>/dev/null; do sleep 10; done
kill $PIPELINE 2>/dev/null || true
[ -f $WORK/annotations/stage.json ] || { echo "the teacher pipeline failed: logs/loss_ablation/home_depot_teacher" >&2; exit 1; }

DIRS=()
for seed in $SEEDS; do
  $PY train.py -m experiment=loss_ablation $HD data.annotations=$WORK/annotations trainer.max_epochs=1 \
      trainer.precision=bf16-mixed hydra.sweeper.params.seed=$seed \
      hydra.sweep.dir=logs/loss_ablation/multiruns/home_depot_seed$seed
  DIRS+=(logs/loss_ablation/multiruns/home_depot_seed$seed)
done
$PY -m lrkd.report "${DIRS[@]}" --out experiments/loss_ablation/report_home_depot
