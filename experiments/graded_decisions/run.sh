#!/usr/bin/env bash
# The graded-decisions study (issue 15), as run for experiments/graded_decisions/README.md:
#   bash experiments/graded_decisions/run.sh chorus_icecat [seeds...]
#   bash experiments/graded_decisions/run.sh home_depot [seeds...]   (HOME_DEPOT=<path to train.csv.zip>)
#   VARIANTS="ce ordinal" bash experiments/graded_decisions/run.sh ...   (a subset of the variants)
# As run for the README: chorus_icecat seeds 1-3 with OMP_NUM_THREADS=1 (two jobs side by side);
# home_depot seeds 1 and 2, VARIANTS="ce ordinal" (plus ce_balanced, seed 1), bf16-mixed.
# The plain cross-encoder (extractor=none, no teacher), 2 epochs, one multirun per variant:
#   argmax       today's rule: argmax, the best epoch on val macro-F1
#   ce           plain CE, thresholds tuned on val for QWK, the best epoch on val/tuned/qwk
#   ce_balanced  class-weighted CE (weights from the train split's counts), tuned thresholds
#   ordinal      CE + the cumulative-link (CORAL-style) term, tuned thresholds
# Every tuned run also logs the argmax metrics of the same checkpoint (test/macro_f1 beside
# test/tuned/macro_f1). Then the report.
set -euo pipefail
DATA=${1:-chorus_icecat}; shift || true
SEEDS=$(echo ${*:-1 2 3} | tr ' ' ',')
PY=${PYTHON:-python}
OUT=logs/graded_decisions/$DATA
COMMON=(extractor=none data.annotations=null trainer.max_epochs=2 seed=$SEEDS callbacks.progress_bar=null)
if [ "$DATA" = home_depot ]; then
    COMMON+=(data=home_depot data.path=${HOME_DEPOT:-../shared/data/home_depot/train.csv.zip} data.max_pairs=20000
             trainer.precision=bf16-mixed)
fi
TUNED=(decision=thresholds decision.metric=qwk callbacks.model_checkpoint.monitor=val/tuned/qwk)
for variant in ${VARIANTS:-argmax ce ce_balanced ordinal}; do
    case $variant in
        argmax) args=(loss=ce) ;;
        ce) args=(loss=ce "${TUNED[@]}") ;;
        ce_balanced) args=(loss=ce +loss.terms.ce.class_weight=balanced "${TUNED[@]}") ;;
        ordinal) args=(loss=ordinal "${TUNED[@]}") ;;
        *) echo "unknown variant $variant" >&2; exit 2 ;;
    esac
    $PY train.py -m "${args[@]}" "${COMMON[@]}" hydra.sweep.dir=$OUT/$variant
done
