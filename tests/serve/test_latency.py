"""lrkd.serve.latency (interleaved timing) and the architecture search's latency table on a tiny
student. Nothing here asserts on a time: only on what was timed, how often, and the bookkeeping."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lrkd.search.latency_table import Architecture, LatencyTable
from lrkd.serve.latency import EagerRunner, make_runner, summarise, synthetic_inputs, time_interleaved
from lrkd.student.model import RelevanceStudent
from tests.student.test_prune import LABELS, MLP, NONE, encoder_config


class CountingRunner:
    def __init__(self, name, log):
        self.name, self.log, self.feed = name, log, None

    def prepare(self, feed):
        self.feed = feed

    def __call__(self):
        self.log.append((self.name, self.feed["input_ids"].shape))


def test_time_interleaved_round_robin_with_own_inputs():
    log = []
    runners = [CountingRunner("a", log), CountingRunner("b", log)]
    feeds = {"a": synthetic_inputs(1, 16, 100), "b": synthetic_inputs(2, 8, 100)}
    seconds = time_interleaved(runners, feeds, iterations=6, rounds=3, warmup=1)
    assert {k: len(v) for k, v in seconds.items()} == {"a": 6, "b": 6}
    timed = [name for name, _ in log[2:]]                   # after one warm-up call each
    assert timed == ["a", "a", "b", "b"] * 3                # 2 calls per round, in turn
    assert {shape for name, shape in log if name == "b"} == {(2, 8)}
    with pytest.raises(ValueError, match="distinct"):
        time_interleaved([CountingRunner("a", []), CountingRunner("a", [])], feeds["a"], 2, 1, 0)


def test_synthetic_inputs_and_summary():
    feed = synthetic_inputs(2, 12, 5000)
    assert feed["input_ids"].shape == (2, 12) and feed["attention_mask"].all()
    assert (feed["input_ids"][:, 0] == 101).all() and (feed["input_ids"][:, -1] == 102).all()
    assert feed["token_type_ids"][0].tolist() == [0] * 4 + [1] * 8
    s = summarise(np.array([0.001, 0.002, 0.003, 0.010]), batch=4)
    assert s["median_ms"] == pytest.approx(2.5) and s["mean_ms"] == pytest.approx(4.0)
    assert s["pairs_per_s"] == pytest.approx(16 / 0.016) and s["n"] == 4


def build(arch: Architecture):
    torch.manual_seed(0)
    ext = {"none": NONE, "mlp": MLP}[arch.extractor]
    return RelevanceStudent(encoder_config({"num_layers": arch.num_layers, "intermediate_size": arch.intermediate_size}),
                            ext, LABELS, ["a", "b"]).eval()


def test_latency_table_times_each_architecture_once_against_the_reference(tmp_path):
    reference = Architecture(None, None, 32, "none")
    archs = [Architecture(1, 16, 32, "none"), Architecture(2, None, 16, "mlp"), Architecture(None, 8, 32, "none")]
    built = []

    def counted(arch):
        built.append(arch)
        return build(arch)

    table = LatencyTable(tmp_path / "t.csv")
    added = table.measure([reference, *archs], reference, counted, "eager", threads=1, batch_sizes=(1, 2),
                          iterations=2, rounds=1, warmup=0, group_size=2)
    assert added == 8                                        # 4 architectures x 2 batch sizes
    ref = table.get(reference, "eager", 1, 1)
    assert ref["ratio"] == 1.0 and ref["latency_ms"] == pytest.approx(ref["reference_ms_pooled"])
    for arch in archs:
        row = table.get(arch, "eager", 1, 2)
        assert row["params"] == build(arch).parameter_counts()["inference"]
        assert row["ratio"] == pytest.approx(row["median_ms"] / row["reference_ms"])
        assert row["latency_ms"] == pytest.approx(row["ratio"] * row["reference_ms_pooled"])
    assert table.get(Architecture(3, None, 32, "none"), "eager", 1, 1) is None
    # reused: a new table from the same file has every row, and measures nothing again
    again = LatencyTable(tmp_path / "t.csv")
    built.clear()
    assert again.measure(archs, reference, counted, "eager", 1, (1, 2), 2, 1, 0) == 0 and built == []
    assert again.get(archs[1], "eager", 1, 1)["params"] == table.get(archs[1], "eager", 1, 1)["params"]
    assert again.get(archs[0], "eager", 2, 1) is None        # another thread count is another setting


def test_runners_score_through_the_serving_graph(tmp_path):
    pytest.importorskip("onnxruntime")
    student = build(Architecture(1, 16, 16, "mlp"))
    feed = synthetic_inputs(1, 16, int(student.encoder.config.vocab_size))
    eager = EagerRunner("e", student)
    onnx = make_runner("o", student, "onnx", tmp_path, threads=1, max_length=16)
    assert onnx.params == eager.params == student.parameter_counts()["inference"]
    seconds = time_interleaved([eager, onnx], feed, 2, 1, 0)
    assert set(seconds) == {"e", "o"}
    with pytest.raises(ValueError, match="latency runtime"):
        make_runner("x", student, "tensorrt", tmp_path)
