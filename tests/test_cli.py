"""Every command's `--help`: complete, TensorFlow-free, named as run."""

import os
import re
import subprocess
import sys

import pytest

from configs import cli, schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAX_RUN = os.path.join(ROOT, "tests", "model", "jax_run.py")
COMMANDS = {
    "model.pretrain": "bert-pretrain",
    "model.finetune": "bert-finetune",
    "model.export": "bert-export",
    "model.predict": "bert-predict",
    "pipelines.vocab": "bert-vocab",
    "pipelines.pretraining_data": "bert-pretraining-data",
    "pipelines.classification_data": "bert-classification-data",
    "pipelines.batch_predict": "bert-batch-predict",
    "pipelines.inspect": "bert-inspect",
}
_OPTION = re.compile(r"^  (-\w, )?(--\w+|\w+)(?: \S+)?(?:\s{2,}(\S.*))?$")


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # CI sets it; these tests choose
    env.update(extra)
    return env


def _undocumented(help_text):
    """Options (and positionals) of an argparse help text with no help."""
    lines = help_text.splitlines()
    missing = []
    for i, line in enumerate(lines):
        m = _OPTION.match(line)
        if not m or m.group(2) in ("-h", "--help"):
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        described = m.group(3) or re.match(r"^ {6,}\S", following)
        if not described:
            missing.append(m.group(2))
    return missing


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_documents_every_flag_without_tensorflow(module):
    # jax_run.py makes tensorflow unimportable: --help must not need it.
    out = subprocess.run(
        [sys.executable, JAX_RUN, "-m", module, "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"usage: python -m {module}"), out.stdout[:200]
    assert _undocumented(out.stdout) == [], out.stdout
    assert "Traceback" not in out.stderr


def test_help_checker_finds_an_undocumented_flag():
    text = "options:\n  -h, --help  show\n  --alpha ALPHA\n  --beta BETA  it\n"
    assert _undocumented(text) == ["--alpha"]


def test_config_flags_show_schema_default_choices_and_set_form():
    text = cli.flag_help(schema.PretrainConfig, "precision")
    assert "default: auto" in text
    assert "one of: auto, float32, mixed_bfloat16, mixed_float16" in text
    assert "--set pretrain.precision=" in text
    data = cli.flag_help(schema.DataConfig, "masked_lm_prob", set_form=False)
    assert data.startswith("fraction of tokens chosen for prediction")
    assert "default: 0.15" in data and "--set" not in data


def test_every_schema_field_has_a_comment():
    for cls in (
        schema.DataConfig,
        schema.ModelConfig,
        schema.PretrainConfig,
        schema.FinetuneConfig,
        schema.ExportConfig,
    ):
        comments = cli._comments(cls)
        for f in cls.__dataclass_fields__:
            assert comments.get(f), f"{cls.__name__}.{f} has no comment"


def test_predict_help_says_it_reads_stdin():
    out = subprocess.run(
        [sys.executable, "-m", "model.predict", "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert "stdin" in out.stdout


def test_console_script_usage_names_the_script():
    script = os.path.join(os.path.dirname(sys.executable), "bert-export")
    if not os.path.exists(script):
        pytest.skip("console scripts not installed")
    out = subprocess.run(
        [script, "--help"], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("usage: bert-export"), out.stdout[:200]


def _finetune_bad_train(tmp_path, **env):
    # Fails on the missing --train file after TensorFlow is imported.
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "model.finetune",
            f"--train={tmp_path}/missing.tsv",
            f"--eval={tmp_path}/missing.tsv",
            f"--model_dir={tmp_path}/run",
        ],
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=300,
    )


def test_tensorflow_cpp_logs_quiet_by_default_and_user_level_kept(tmp_path):
    quiet = _finetune_bad_train(tmp_path)
    assert quiet.returncode == 2, quiet.stderr[-2000:]
    assert quiet.stderr.strip().startswith("error:"), quiet.stderr[-2000:]
    assert len(quiet.stderr.strip().splitlines()) == 1, quiet.stderr
    chatty = _finetune_bad_train(tmp_path, TF_CPP_MIN_LOG_LEVEL="0")
    assert len(chatty.stderr.strip().splitlines()) > 1, chatty.stderr


def test_finetune_label_and_column_flags_set_the_config(tmp_path):
    from configs.loader import load_config
    from model import finetune

    args, overrides = finetune._parse_flags(
        [
            f"--train={tmp_path}/t.tsv",
            f"--eval={tmp_path}/d.tsv",
            f"--model_dir={tmp_path}/run",
            "--labels=neg, pos,1",
            "--text_column=false",  # a string, not YAML's boolean
            "--label_column=y",
            "--epochs=2",
        ]
    )
    ft = load_config(args.config, overrides).finetune
    assert ft.labels == ("neg", "pos", "1")
    assert (ft.text_column, ft.label_column, ft.epochs) == ("false", "y", 2)
    _, none = finetune._parse_flags(
        [f"--train={tmp_path}/t", f"--eval={tmp_path}/d", f"--model_dir={tmp_path}/r"]
    )
    assert load_config((), none).finetune.labels == ()  # learned from --train


def test_readme_lists_every_console_script():
    with open(os.path.join(ROOT, "setup.py")) as f:
        scripts = set(re.findall(r'"(bert-[\w-]+)=', f.read()))
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    listed = readme.split("Every command is also a console script", 1)[1]
    listed = set(re.findall(r"`(bert-[\w-]+)`", listed.split("\n\n", 1)[0]))
    assert scripts == set(COMMANDS.values())
    assert listed == scripts


def test_overwrite_is_one_flag_with_the_same_values_everywhere():
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_overwrite_flag(parser.add_argument, "replace it")
    assert parser.parse_args([]).overwrite is False
    assert parser.parse_args(["--overwrite"]).overwrite is True
    assert parser.parse_args(["--overwrite=false"]).overwrite is False
    assert parser.parse_args(["--overwrite=yes"]).overwrite is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--overwrite=maybe"])
    assert "replace it (default false: refuse)" in parser.format_help()
    # Every command that writes a result takes it from there.
    for path in (
        "model/pretrain.py",
        "model/finetune.py",
        "model/export.py",
        "pipelines/options.py",
        "pipelines/batch_predict.py",
        "pipelines/classification_data.py",
    ):
        with open(os.path.join(ROOT, path)) as f:
            source = f.read()
        assert '"--overwrite",' not in source and "add_overwrite_flag(" in source
