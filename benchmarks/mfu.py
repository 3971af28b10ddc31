"""Throughput and model FLOPs utilisation of a `model.pretrain` run.

    python benchmarks/mfu.py RUN_DIR [--peak_tflops=989] [--json=FILE]

Reads the run's own `metrics.jsonl` (`examples_per_second` per log window;
the first call, which compiles, is timed apart by the trainer and the first
timed window is dropped as warm-up) and `config.yaml` (model sizes, batch,
precision, backend), and prints one JSON object: median sequences/s,
tokens/s, achieved TFLOP/s and MFU. TF-free (runs on a JAX-only machine).

FLOPs per sequence (dense matmuls, 2 FLOPs per multiply-add, x3 for the
forward and backward passes; attention scores and context; the MLM head
only at the P masked positions; the pooler):
  L * (6 * S * (4 H^2 + 2 H I) + 12 * S^2 * H) + 6 * P * (H^2 + H V) + 6 H^2
"""

import argparse
import json
import os
import statistics
import sys

import yaml

# Dense bf16 peak per chip, TFLOP/s (H100/H200 SXM: 989).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}


def flops_per_sequence(num_layers, hidden, intermediate, vocab, seq, predictions):
    """Training FLOPs (forward + backward) for one sequence; see module doc."""
    encoder = num_layers * (
        6 * seq * (4 * hidden**2 + 2 * hidden * intermediate) + 12 * seq**2 * hidden
    )
    mlm = 6 * predictions * (hidden**2 + hidden * vocab)
    return encoder + mlm + 6 * hidden**2


def peak_tflops(override=0.0):
    """(peak TFLOP/s or None, device name) of JAX's first device."""
    if override:
        return override, "given"
    try:
        import jax

        kind = jax.devices()[0].device_kind
    except ImportError:
        return None, "unknown"
    for name, value in PEAK_TFLOPS.items():
        if name in kind:
            return value, kind
    return None, kind


def report(run_dir, peak=0.0):
    with open(os.path.join(run_dir, "config.yaml")) as f:
        cfg = yaml.safe_load(f)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    rates = [r["examples_per_second"] for r in records if "examples_per_second" in r]
    rates = rates[1:] or rates
    if not rates:
        raise SystemExit(f"error: {run_dir}/metrics.jsonl has no timed window")
    m, d, p = cfg["model"], cfg["data"], cfg["pretrain"]
    seq, pred = d["max_seq_length"], d["max_predictions_per_seq"]
    flops = flops_per_sequence(
        m["num_layers"],
        m["hidden_dim"],
        m["intermediate_dim"],
        m["vocabulary_size"],
        seq,
        pred,
    )
    seq_per_s = statistics.median(rates)
    peak, device = peak_tflops(peak)
    first = [r for r in records if "first_call_seconds" in r]
    return {
        "model": "model.pretrain",
        "run_dir": run_dir,
        "device": device,
        "backend": p.get("backend"),
        "precision": p["precision"],
        "batch_size": p["batch_size"],
        "seq": seq,
        "layers_hidden": [m["num_layers"], m["hidden_dim"]],
        "first_call_s": round(first[0]["first_call_seconds"], 1) if first else None,
        "last_loss": round(records[-1]["loss"], 4),
        "seq_per_s_windows": [round(r, 1) for r in rates],
        "seq_per_s": round(seq_per_s, 1),
        "tokens_per_s": round(seq_per_s * seq),
        "achieved_tflops": round(seq_per_s * flops / 1e12, 1),
        "peak_tflops": peak,
        "mfu": round(seq_per_s * flops / 1e12 / peak, 4) if peak else None,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--peak_tflops", type=float, default=0.0)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    result = report(args.run_dir, args.peak_tflops)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    sys.exit(main() and 0)
