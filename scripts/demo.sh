#!/usr/bin/env bash
# `make demo`: raw text -> a served sentiment model, on the samples in data/.
#
#   1. pretraining data   data/sample_corpus.txt -> TFRecords (Beam)   [demo_data.sh]
#   2. pretrain           bert_tiny with the budget recipe for PRETRAIN_MINUTES
#                         (CPU), held-out masked-LM accuracy at start and end
#   3. classification data data/sst2_train_sample.tsv -> TFRecords (Beam)
#   4. fine-tune          sentiment head, eval on data/sst2_dev.tsv each epoch
#   5. export             SavedModel: raw strings in, label + probabilities out
#   6. predict            three sentences through the SavedModel
#
# Everything goes to demo_output/ (gitignored; wiped at the start). Budget:
# < 5 minutes on 2 CPU cores. Knobs: PRETRAIN_MINUTES, FINETUNE_EPOCHS.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${DEMO_OUTPUT:-demo_output}
PRETRAIN_MINUTES=${PRETRAIN_MINUTES:-1.5}
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-4}
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONWARNINGS=ignore
START=$(date +%s)

# TensorFlow's C++ start-up lines (oneDNN, CUDA probing) ignore
# TF_CPP_MIN_LOG_LEVEL in this release: filter them out of stderr.
NOISE='^([IWE][0-9]{4} |WARNING: All log messages before absl|To enable the following instructions)'
run() {
  "$@" 2> >(grep -v -E "$NOISE" >&2)
}

stage() {
  echo
  echo "=== [$1/6] $2 (t=$(($(date +%s) - START))s) ==="
}

rm -rf "$OUT"
mkdir -p "$OUT"

stage 1 "pretraining data: data/sample_corpus.txt -> $OUT/pretraining"
run bash scripts/demo_data.sh "$OUT/pretraining"

stage 2 "pretrain bert_tiny, budget recipe, $PRETRAIN_MINUTES minutes -> $OUT/pretrain"
# The budget recipe (masked LM only, no dropout, a one-cycle schedule that
# ends with the budget); the held-out documents are evaluated at the start
# and the end (--save_every is left at the end too).
run "$PY" -m model.pretrain \
  --config=pretrain/bert_tiny.yaml --config=configs/pretrain/budget.yaml \
  --budget_minutes="$PRETRAIN_MINUTES" --steps=100000 \
  --data="$OUT/pretraining" \
  --model_dir="$OUT/pretrain" \
  --batch_size=32 --log_every=50 --save_every=100000 \
  --set data.vocab_file=data/vocab.txt
"$PY" - "$OUT/pretrain/metrics.jsonl" <<'PYEOF'
import json, sys
evals = [r for r in map(json.loads, open(sys.argv[1])) if "eval_mlm_accuracy" in r]
first, last = evals[0], evals[-1]
print(
    f"held-out masked-LM accuracy: {first['eval_mlm_accuracy']:.3f} at step "
    f"{first['step']} -> {last['eval_mlm_accuracy']:.3f} at step {last['step']}"
)
PYEOF

stage 3 "classification data: data/sst2_train_sample.tsv -> $OUT/sst2_records"
run "$PY" -m pipelines.classification_data \
  --input=data/sst2_train_sample.tsv \
  --vocab=data/vocab.txt \
  --output_dir="$OUT/sst2_records" \
  --labels=0,1 --max_seq_length=64 --overwrite

stage 4 "fine-tune on the SST-2 sample from the pretrained encoder -> $OUT/sst2_model"
run "$PY" -m model.finetune \
  --config=configs/finetune/sst2.yaml \
  --train="$OUT/sst2_records" \
  --eval=data/sst2_dev.tsv \
  --init_checkpoint="$OUT/pretrain" \
  --vocab=data/vocab.txt \
  --model_dir="$OUT/sst2_model" \
  --epochs="$FINETUNE_EPOCHS" --learning_rate=3e-4

stage 5 "export a raw-string SavedModel -> $OUT/sst2_serving"
run "$PY" -m model.export --model_dir="$OUT/sst2_model" --export_dir="$OUT/sst2_serving"

stage 6 "predict three sentences with the SavedModel"
run "$PY" -m model.predict --saved_model="$OUT/sst2_serving" \
  "a gripping, beautifully acted film that stays with you ." \
  "the plot is dull and the jokes fall flat ." \
  "Un film magnifique ! 😀"

echo
echo "demo finished in $(($(date +%s) - START))s; outputs in $OUT/"
