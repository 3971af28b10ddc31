#!/usr/bin/env bash
# Prepares what `benchmarks/gpu_run.sh` carries to the GPU machine (which
# has JAX but no TensorFlow, Keras or Beam):
#   benchmarks/.gpu_data/records: the product's data job on the shared
#     pretraining corpus with Google's uncased vocab (seq 128, 20
#     predictions, dupe_factor $DUPE), gzip shards; the trainer re-masks
#     them on the device (`--masking=dynamic`);
#   .whl/: wheels of keras, keras-hub and their pure-Python needs.
# Both are git-ignored and must stay under the 64 MiB carry limit together.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${SHARED:-../shared/data}"
DUPE="${DUPE:-2}"
# CORPUS="$SHARED/corpus-small/*" makes a small set for a DRY_RUN check.
CORPUS="${CORPUS:-$SHARED/corpus/*.txt.gz}"
PY=.venv/bin/python
OUTDIR=benchmarks/.gpu_data/records
rm -rf "$OUTDIR" && mkdir -p "$(dirname "$OUTDIR")"
$PY -m pipelines.pretraining_data --input="$CORPUS" \
  --vocab="$SHARED/vocab/bert-base-uncased-vocab.txt" --output_dir="$OUTDIR" \
  --max_seq_length=128 --max_predictions_per_seq=20 --dupe_factor="$DUPE" \
  --num_shards=8 --compression=gzip
cp "$SHARED/vocab/bert-base-uncased-vocab.txt" "$OUTDIR/vocab.txt"
rm -rf .whl && mkdir .whl
# Pure-Python wheels, and the two binary ones for each Python the GPU image
# may have; gpu_run.sh lets pip pick the matching one.
$PY -m pip download -q --no-deps -d .whl keras==3.15.1 keras-hub==0.32.0 namex
for v in 3.10 3.11 3.12 3.13; do
  $PY -m pip download -q --no-deps -d .whl --only-binary=:all: \
    --python-version "$v" --platform manylinux2014_x86_64 \
    --platform manylinux_2_28_x86_64 optree regex tokenizers
done
du -sh "$OUTDIR" .whl
total=$(du -sm "$OUTDIR" .whl | awk '{s += $1} END {print s}')
if [ "$total" -gt 62 ]; then
  echo "warning: ${total} MiB to carry; the limit is 64 MiB: lower DUPE" >&2
fi
