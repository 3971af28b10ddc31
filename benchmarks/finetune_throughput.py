"""Fine-tuning speed: float32 + fixed padding (the old default) vs the fast path.

    .venv/bin/python benchmarks/finetune_throughput.py [--steps=160]
        [--model=pretrain/bert_mini.yaml] [--settings=f32,f32_grouped,auto,auto_grouped]

Each setting runs `python -m model.finetune` in a fresh process (a dtype
policy is process-global) on the SST-2 sentence-level train split
(`../shared/data/sentiment`), batch 32, `max_seq_length` 64, for `--steps`
optimizer steps from random init. The speed is taken from the run's own
`metrics.jsonl` step lines (`elapsed_s`) between the first logged step and
the last, so start-up, tracing of the first shapes and the end-of-run
evaluation are not in it. Ratios are against the first setting, measured in
the same run. Accuracy is not measured here (too few steps): see
`benchmarks/sst2.py`.

Settings:
  f32           finetune.precision=float32, group_by_length=false (before)
  f32_grouped   float32, length-grouped batches trimmed to their longest row
  auto          precision auto (bfloat16 on AMX CPUs), fixed padding
  auto_grouped  precision auto + length-grouped batches (the default now)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(REPO, "..", "shared", "data")
sys.path.insert(0, REPO)

SETTINGS = {
    "f32": ["finetune.precision=float32", "finetune.group_by_length=false"],
    "f32_grouped": ["finetune.precision=float32", "finetune.group_by_length=true"],
    "auto": ["finetune.precision=auto", "finetune.group_by_length=false"],
    "auto_grouped": ["finetune.precision=auto", "finetune.group_by_length=true"],
}


def measure(name, args, work_dir) -> dict:
    model_dir = os.path.join(work_dir, name)
    cmd = [
        sys.executable,
        "-m",
        "model.finetune",
        f"--config={args.model}",
        "--config=configs/finetune/sst2.yaml",
        f"--train={args.train}",
        f"--eval={args.dev}",
        f"--model_dir={model_dir}",
        f"--vocab={args.vocab}",
        f"--max_steps={args.steps}",
        "--epochs=1",
        "--batch_size=32",
        "--set=finetune.max_seq_length=64",
    ] + [f"--set={s}" for s in SETTINGS[name]]
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        steps = [
            r for r in map(json.loads, f) if r["kind"] == "train" and "elapsed_s" in r
        ]
    first, last = steps[0], steps[-1]
    rate = (last["step"] - first["step"]) / (last["elapsed_s"] - first["elapsed_s"])
    from configs.loader import load_resolved

    precision = load_resolved(model_dir).finetune.precision
    return {
        "setting": name,
        "steps_per_s": rate,
        "sentences_per_s": rate * 32,
        "window": [first["step"], last["step"]],
        "precision": precision,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", default=f"{SHARED}/sentiment/sst2_sentences_train.tsv")
    p.add_argument("--dev", default=f"{SHARED}/sentiment/sst2_dev.tsv")
    p.add_argument("--vocab", default=f"{SHARED}/vocab/bert-base-uncased-vocab.txt")
    p.add_argument("--model", default="pretrain/bert_mini.yaml")
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--out", default="", help="also write the results as JSON")
    args = p.parse_args(argv)
    if not os.path.exists(args.train):
        sys.exit(f"data not found ({args.train}): needs ../shared/data")
    names = args.settings.split(",")
    results = []
    with tempfile.TemporaryDirectory() as work_dir:
        for name in names:
            results.append(measure(name, args, work_dir))
            r = results[-1]
            print(
                f"{name}: {r['sentences_per_s']:.1f} sentences/s "
                f"(steps {r['window'][0]}-{r['window'][1]})",
                flush=True,
            )
    base = results[0]["sentences_per_s"]
    print(f"\nfine-tuning {args.model}, SST-2 sentences, batch 32, max_seq_length 64")
    print("| setting | sentences/s | vs " + names[0] + " |")
    print("| --- | --- | --- |")
    for r in results:
        print(
            f"| {r['setting']} | {r['sentences_per_s']:.1f} | "
            f"{r['sentences_per_s'] / base:.2f}x |"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
