#!/usr/bin/env bash
# CRSD's teacher steps on chorus_icecat with the embedded SmolLM2-135M teacher, sized for one shared CPU
# core (about 50 min): DAPT, then SFT from the base and from the DAPT model on the same generations,
# then DPO on conflict pairs and on reward pairs on the same budget. Each stage's figures are in its
# stage.json; copies land in experiments/teacher_ablation/results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
W=${W:-artefacts/teacher_ablation}
R=experiments/teacher_ablation/results
mkdir -p "$R"
PY=${PY:-python}
COMMON=(teacher=smollm2 "stage.work_dir=$W" callbacks.progress_bar=null logger=csv)
EVAL=(stage.evaluate=true stage.eval_max_pairs=32 stage.eval_batch_size=32 stage.eval_max_new_tokens=96)
keep() { cp "$W/$1/stage.json" "$R/$2.json"; echo "== $2: $(date -u +%T)"; }

# 1. DAPT: the dataset's items + train queries + the 19k-product Icecat catalogue, 64 blocks of 256 tokens
$PY train.py stage=teacher_dapt "${COMMON[@]}" \
  'stage.corpus.files=[${paths.root_dir}/datasets/chorus_icecat/catalogue.parquet]' \
  stage.max_blocks=64 stage.eval_blocks=32 stage.lr=3e-5 stage.batch_size=4
keep dapt dapt
# 2. MPCoT generations from the base teacher (shared by every later stage)
$PY train.py stage=teacher_generate "${COMMON[@]}" stage.max_pairs=32 stage.n=4 stage.max_new_tokens=40 \
  stage.batch_size=64
keep generations generate
# 3. SFT from the base teacher (zero-shot = the base teacher)
SFT=(stage.epochs=2 stage.lr=5e-5 stage.max_length=512)
$PY train.py stage=teacher_sft "${COMMON[@]}" "${SFT[@]}" "${EVAL[@]}"
keep sft sft_base
# 4. the multi-dimensional reward, with the learned reward model's held-out accuracy
$PY train.py stage=teacher_reward "${COMMON[@]}" stage.learned.enabled=true stage.learned.bradley_terry=true
keep reward reward
# 5. DPO on the same budget (1 epoch, as many pairs): conflict pairs (at most 24), then as many reward pairs
DPO=(stage.max_length=512)
$PY train.py stage=teacher_dpo "${COMMON[@]}" "${DPO[@]}" "${EVAL[@]}" stage.pairs=conflict stage.max_pairs=24
keep dpo dpo_conflict
N=$($PY -c "import json; print(json.load(open('$R/dpo_conflict.json'))['metrics']['pairs'])")
$PY train.py stage=teacher_dpo "${COMMON[@]}" "${DPO[@]}" "${EVAL[@]}" stage.pairs=reward "stage.max_pairs=$N"
keep dpo dpo_reward
# 6. SFT from the DAPT model on the same examples (zero-shot = the DAPT teacher)
$PY train.py stage=teacher_sft "${COMMON[@]}" "${SFT[@]}" "${EVAL[@]}" stage.init_from=dapt
keep sft sft_dapt
