# The settings the Qwen-teacher study scripts share (sourced by run_chorus_qwen_{mlp,crsd,pool_kd}.sh;
# `"$@"`: the seeds, 1 2 3 by default): 2 epochs, thresholds tuned on val for QWK, the checkpoint kept
# on val/tuned/qwk, CSV logs; the teacher's artefact over the train split and the retrieved pool.
SEEDS=$(echo ${*:-1 2 3} | tr ' ' ',')
PY=${PYTHON:-python}
ART=artefacts/chorus_icecat/qwen2.5-coder-1.5b/score_annotations
POOL=+data.pool.catalogue=datasets/chorus_icecat/catalogue.parquet
COMMON=(trainer.max_epochs=2 seed=$SEEDS callbacks.progress_bar=null logger=csv
        decision=thresholds decision.metric=qwk callbacks.model_checkpoint.monitor=val/tuned/qwk)
