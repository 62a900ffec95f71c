"""MetricsLogger: one JSON object per step in metrics.jsonl (NaN as null), the same scalars in tensorboard,
text samples in samples.jsonl and tensorboard, truncation on resume, and nothing at all when disabled."""

from __future__ import annotations

import json
import struct

import numpy as np

from capojax.trainer.logger import MetricsLogger


def _tensorboard_events(workdir):
    """(tag, step, simple_value or text) of every summary value in the tensorboard event files (TFRecord framing:
    length u64, its crc u32, the Event proto, its crc u32)."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted((workdir / "tensorboard").glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                text = value.tensor.string_val[0].decode() if value.tensor.string_val else None
                out.append((value.tag, event.step, text if text is not None else value.simple_value))
    return out


def test_scalars_go_to_jsonl_and_tensorboard(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True)
    logger.scalars(1, {"b": np.float32(0.5), "a": 2, "bad": float("nan"), "inf": np.inf})
    logger.scalars(2, {"a": 3.0})
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "a": 2, "b": 0.5, "bad": None, "inf": None}, {"step": 2, "a": 3.0}]
    assert list(rows[0]) == ["step", "a", "b", "bad", "inf"]  # sorted keys after the step
    scalars = [(tag, step, value) for tag, step, value in _tensorboard_events(tmp_path) if tag in ("a", "b", "bad")]
    assert sorted(scalars) == [("a", 1, 2.0), ("a", 2, 3.0), ("b", 1, 0.5)]  # non-finite values are left out


def test_samples_go_to_jsonl_and_tensorboard_text(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True)
    logger.samples(3, [{"response": "x = \\boxed{4}", "correct": True, "reward": 1.0}])
    logger.samples(4, [])  # nothing to write
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert rows == [{"step": 3, "response": "x = \\boxed{4}", "correct": True, "reward": 1.0}]
    texts = [(step, text) for tag, step, text in _tensorboard_events(tmp_path) if tag.startswith("samples")]
    assert len(texts) == 1 and texts[0][0] == 3
    assert "**correct=True reward=1.0**" in texts[0][1] and "x = \\boxed{4}" in texts[0][1]


def test_truncate_after_drops_the_steps_after_the_restored_checkpoint(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True)
    for step in (1, 2, 3):
        logger.scalars(step, {"a": float(step)})
        logger.samples(step, [{"response": str(step)}])
    logger.truncate_after(2)
    logger.scalars(3, {"a": 30.0})  # the resumed run writes step 3 again
    logger.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["a"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    samples = [json.loads(line)["step"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert samples == [1, 2]


def test_a_disabled_logger_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    logger = MetricsLogger(workdir, enabled=False)  # every process but process 0
    logger.scalars(1, {"a": 1.0})
    logger.samples(1, [{"response": "x"}])
    logger.truncate_after(0)
    logger.close()
    assert not workdir.exists()
