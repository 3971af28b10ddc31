"""The timed probe behind `pretrain.precision: auto` on bf16-capable CPUs."""

import json
import os

import pytest

from configs.loader import load_config, load_resolved
from model import precision_probe, pretrain, training
from pretraining_records import tiny_flags

SMALL = [
    "model.vocabulary_size=120",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.hidden_dim=16",
    "model.intermediate_dim=32",
    "model.max_sequence_length=64",
    "data.max_seq_length=32",
    "data.max_predictions_per_seq=5",
    "finetune.max_seq_length=32",
    "export.max_seq_length=32",
]


@pytest.fixture
def probe_on(tmp_path, monkeypatch):
    monkeypatch.setenv(precision_probe.PROBE_ENV, "on")
    monkeypatch.setenv(precision_probe.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / precision_probe.CACHE_FILE


def test_probe_times_both_precisions_and_caches_its_choice(probe_on):
    cfg = load_config([], SMALL)
    precision, note = precision_probe.choose(cfg, 4)
    assert precision in precision_probe.CANDIDATES
    assert note.startswith(f"precision auto: {precision} (timed probe: ")
    cached = json.loads(probe_on.read_text())
    ((key, entry),) = cached.items()
    assert "L1 H16 A2 I32 V120" in key and "batch 4 seq 32 pred 5" in key
    seconds = entry["seconds_per_step"]
    assert set(seconds) == set(precision_probe.CANDIDATES)
    assert all(0 < s < 60 for s in seconds.values())
    faster = (
        seconds["mixed_bfloat16"] <= precision_probe.BF16_MARGIN * seconds["float32"]
    )
    assert precision == ("mixed_bfloat16" if faster else "float32")
    # The second run of the same shape reads the cache: same choice.
    again, note = precision_probe.choose(cfg, 4)
    assert again == precision and "probed earlier on this machine" in note
    # Another shape is another entry.
    precision_probe.choose(cfg, 2)
    assert len(json.loads(probe_on.read_text())) == 2


def test_unwritable_cache_still_chooses(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(precision_probe.CACHE_ENV, str(blocker / "cache"))
    precision, note = precision_probe.choose(load_config([], SMALL), 2)
    assert precision in precision_probe.CANDIDATES
    assert "; not cached: " in note and "\n" not in note


@pytest.mark.skipif(not training._cpu_has_bf16(), reason="CPU without bf16")
def test_pretrain_auto_uses_the_probe(records_dir, tmp_path, probe_on, capsys):
    model_dir = str(tmp_path / "run")
    pretrain.run(tiny_flags(records_dir, model_dir, steps=1, precision="auto"))
    assert "precision auto: " in capsys.readouterr().out
    (entry,) = json.loads(probe_on.read_text()).values()
    assert load_resolved(model_dir).pretrain.precision == entry["precision"]
    # The probe's models came first in the process; the run's weights still
    # load into a fresh encoder (fine-tuning's path).
    from model.bert_backbone import load_pretrained_backbone

    assert load_pretrained_backbone(model_dir).hidden_dim == 16
    # Off: the static rule (bf16 on a CPU with bf16 instructions), no probe.
    os.environ[precision_probe.PROBE_ENV] = "off"
    other = str(tmp_path / "run2")
    pretrain.run(tiny_flags(records_dir, other, steps=1, precision="auto"))
    assert "precision auto: " not in capsys.readouterr().out
    assert load_resolved(other).pretrain.precision == "mixed_bfloat16"
