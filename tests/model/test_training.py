import json

import pytest

from model import training

CPU_PRECISION = "mixed_bfloat16" if training._cpu_has_bf16() else "float32"


@pytest.mark.parametrize(
    "hidden, device, replicas, want",
    [
        (128, "cpu", 1, (CPU_PRECISION, False)),
        (512, "cpu", 1, (CPU_PRECISION, False)),
        (128, "cpu", 2, (CPU_PRECISION, False)),
        (768, "gpu", 1, ("mixed_bfloat16", True)),
        (1024, "tpu", 8, ("mixed_bfloat16", False)),
    ],
)
def test_choose_fast_path(hidden, device, replicas, want):
    assert training.choose_fast_path("auto", "auto", hidden, device, replicas) == want


def test_choose_fast_path_respects_explicit_settings():
    assert training.choose_fast_path("mixed_float16", "true", 64, "cpu", 2) == (
        "mixed_float16",
        True,
    )


def test_metrics_logger_drops_steps_after_resume_point(tmp_path):
    logger = training.MetricsLogger(str(tmp_path))
    for step in (1, 2, 3, 4):
        logger.log(step, {"loss": 5.0 - step, "mlm_accuracy": 0.1 * step})
    training.MetricsLogger(str(tmp_path), resume_step=2)
    records = training.read_metrics(str(tmp_path / training.METRICS_FILE))
    assert [r["step"] for r in records] == [1, 2]
    png = training.plot_metrics(
        str(tmp_path / training.METRICS_FILE), str(tmp_path / "m.png")
    )
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert json.loads(json.dumps(records[0]))["loss"] == 4.0
