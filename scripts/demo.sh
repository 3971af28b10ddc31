#!/usr/bin/env bash
# `make demo`: raw text -> a served sentiment model, on the samples in data/.
#
#   1. pretraining data   data/sample_corpus.txt -> TFRecords (Beam)   [demo_data.sh]
#   2. pretrain           bert_tiny, a few hundred steps (CPU)
#   3. classification data data/sst2_train_sample.tsv -> TFRecords (Beam)
#   4. fine-tune          sentiment head, eval on data/sst2_dev.tsv each epoch
#   5. export             SavedModel: raw strings in, label + probabilities out
#   6. predict            three sentences through the SavedModel
#
# Everything goes to demo_output/ (gitignored; wiped at the start). Budget:
# <= 15 minutes on 2 CPU cores. Knobs: PRETRAIN_STEPS, FINETUNE_EPOCHS.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${DEMO_OUTPUT:-demo_output}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-100}
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

stage 2 "pretrain bert_tiny for $PRETRAIN_STEPS steps -> $OUT/pretrain"
run "$PY" -m model.pretrain \
  --config=pretrain/bert_tiny.yaml \
  --data="$OUT/pretraining" \
  --model_dir="$OUT/pretrain" \
  --steps="$PRETRAIN_STEPS" --warmup_steps=20 --batch_size=32 \
  --log_every=25 --save_every="$PRETRAIN_STEPS" \
  --set data.vocab_file=data/vocab.txt

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
