"""Config resolution: defaults -> YAML -> overrides, strict, validated."""

import os

import pytest

from configs import features, loader, metadata, schema
from configs.schema import ConfigError, ExperimentConfig


def test_defaults_are_bert_base_and_valid():
    cfg = loader.load_config()
    assert cfg.model.num_layers == 12 and cfg.model.hidden_dim == 768
    assert cfg.data.max_seq_length == 128
    assert cfg.data.max_predictions_per_seq == 20


def test_yaml_then_overrides_in_order(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  num_layers: 3\npretrain:\n  steps: 7\n")
    cfg = loader.load_config(
        ["pretrain/bert_tiny.yaml", str(extra)], ["pretrain.steps=9"]
    )
    assert cfg.model.hidden_dim == 128  # from bert_tiny.yaml
    assert cfg.model.num_layers == 3  # later file wins
    assert cfg.pretrain.steps == 9  # override wins
    assert cfg.pretrain.learning_rate == 5e-4  # int/float widening kept


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.num_layerz=3", "unknown key model.num_layerz"),
        ("modle.num_layers=3", "unknown section 'modle'"),
        ("model.num_layers=three", "expects int"),
        ("model.num_heads=5", "divisible"),
        ("data.masked_lm_prob=1.5", "masked_lm_prob"),
        ("data.max_seq_length=4", "at least 8"),
        ("data.max_seq_length=1024", "exceeds model.max_sequence_length"),
        ("pretrain.strategy=gpu", "strategy"),
        ("finetune.learning_rate=fast", "auto or a positive number"),
        ("finetune.learning_rate=-1e-4", "auto or a positive number"),
        ("finetune.learning_rate=0", "auto or a positive number"),
        ("nonsense", "section.key=value"),
    ],
)
def test_bad_overrides_fail_with_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as e:
        loader.load_config([], [override])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "hidden, rate",
    [(128, 3e-4), (255, 3e-4), (256, 1e-4), (384, 1e-4), (767, 1e-4), (768, 3e-5)],
)
def test_auto_finetune_learning_rate_follows_the_width(hidden, rate):
    assert schema.finetune_learning_rate("auto", hidden) == rate
    # A number (as YAML or a flag gives it) is kept whatever the width.
    assert schema.finetune_learning_rate("2e-5", hidden) == 2e-5
    assert schema.finetune_learning_rate(5e-5, hidden) == 5e-5


def test_finetune_learning_rate_from_yaml_and_flags():
    cfg = loader.load_config(["finetune/sst2.yaml"])
    assert cfg.finetune.learning_rate == "auto"
    # YAML 1.1 reads 5e-5 as a string and 5.0e-5 as a float: both are kept.
    for value in ("5e-5", "5.0e-5"):
        cfg = loader.load_config([], [f"finetune.learning_rate={value}"])
        assert schema.finetune_learning_rate(cfg.finetune.learning_rate, 768) == 5e-5


def test_every_shipped_yaml_loads():
    import glob
    import os

    paths = glob.glob(os.path.join(loader.CONFIG_DIR, "**", "*.yaml"), recursive=True)
    assert len(paths) >= 7
    for path in paths:
        loader.load_config([path])


def test_dump_and_reload_round_trip(tmp_path):
    cfg = loader.load_config(["pretrain/bert_tiny.yaml", "finetune/sst2.yaml"])
    loader.dump_config(cfg, str(tmp_path))
    assert loader.load_resolved(str(tmp_path)) == cfg


def test_metadata_mismatch_names_every_problem():
    meta = {
        "kind": "pretraining",
        "max_seq_length": 128,
        "max_predictions_per_seq": 20,
        "vocab_size": 30522,
    }
    metadata.check_compatible(
        meta,
        kind="pretraining",
        max_seq_length=128,
        max_predictions_per_seq=20,
        vocabulary_size=30522,
    )
    with pytest.raises(ConfigError) as e:
        metadata.check_compatible(
            meta,
            kind="pretraining",
            max_seq_length=64,
            max_predictions_per_seq=10,
            vocabulary_size=1000,
        )
    text = str(e.value)
    assert "max_seq_length" in text and "max_predictions_per_seq" in text
    assert "vocab_size" in text


def test_special_token_ids_by_name(vocab_tokens):
    ids = features.special_token_ids(vocab_tokens)
    assert ids[features.CLS] == vocab_tokens.index("[CLS]")
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        features.special_token_ids([t for t in vocab_tokens if t != "[MASK]"])


def test_feature_lengths():
    spec = features.feature_lengths("pretraining", 128, 20)
    assert spec["input_ids"] == ("int64", 128)
    assert spec["masked_lm_weights"] == ("float32", 20)
    assert spec["next_sentence_labels"] == ("int64", 1)


def test_scratch_dirs_are_removed_when_the_process_exits(tmp_path):
    # A vocab.txt written from a tokenizer.json, a local copy of remote
    # weights: gone once the run ends, also when it ends with an error.
    import subprocess
    import sys

    code = (
        "from configs import fileio; d = fileio.scratch_dir('vocab-'); "
        "open(d + '/vocab.txt', 'w').write('[PAD]'); print(d); "
        "raise SystemExit('error: a mistake')"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True
    )
    assert out.returncode == 1 and out.stderr.strip() == "error: a mistake"
    path = out.stdout.strip()
    assert os.path.basename(path).startswith("vocab-")
    assert not os.path.exists(path)
