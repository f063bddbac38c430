"""xentstream.torch: the training-loop wrapper, and exact sync over a real
``torch.distributed`` gloo group of two processes (references: torch and one process)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from stream_support import child_env

import xentstream as xs
from xentstream.torch import TorchMetric

BOUNDS = [0, 13, 50, 51, 120, 200, 260, 301]  # uneven batches, one of a single row


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(301, 5)) * 3
    labels = rng.integers(0, 5, 301)
    labels[::7] = -100  # padding
    return logits, labels


_RANK = """
import json, sys
import numpy as np, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[5])
import xentstream as xs
from xentstream.torch import TorchMetric
from test_torch_integration import BOUNDS, _data

rank, world, init, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
logits, labels = _data()
metric = TorchMetric(xs.CrossEntropy(input="logits", ignore_index=-100, per_class=True))
steps = []
for k, (a, b) in enumerate(zip(BOUNDS, BOUNDS[1:])):
    if k % world == rank:  # the ranks share the batches, as a DistributedSampler would
        value = metric(torch.from_numpy(logits[a:b]), torch.from_numpy(labels[a:b]))
        steps.append([a, b, value.item()])
report = metric.report()
result = {
    "report": report.to_dict(),
    "compute": metric.compute().item(),
    "local_count": metric.metric.compute().count,
    "steps": steps,
}
with open(out, "w") as handle:
    json.dump(result, handle)
dist.destroy_process_group()
"""


def test_distributed_sync_is_bitwise_one_process(tmp_path: Path) -> None:
    tests = str(Path(__file__).resolve().parent)
    init = f"file://{tmp_path / 'rendezvous'}"
    outputs = [tmp_path / f"rank{rank}.json" for rank in range(2)]
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK, str(rank), "2", init, str(outputs[rank]), tests],
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    for process in ranks:
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr
    results = [json.loads(path.read_text()) for path in outputs]

    logits, labels = _data()
    whole = xs.CrossEntropy(input="logits", ignore_index=-100, per_class=True)
    whole.update(logits, labels)
    for result in results:
        assert result["report"] == whole.compute().to_dict()  # bitwise, per class too
        assert result["compute"] == whole.value
    assert 0 < results[0]["local_count"] < whole.compute().count
    assert results[0]["local_count"] + results[1]["local_count"] == whole.compute().count
    expected = F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))
    assert math.isclose(results[0]["compute"], expected.item(), rel_tol=1e-12)
    for a, b, value in results[0]["steps"] + results[1]["steps"]:
        batch = F.cross_entropy(torch.from_numpy(logits[a:b]), torch.from_numpy(labels[a:b]))
        assert math.isclose(value, batch.item(), rel_tol=1e-12) or (
            math.isnan(value) and math.isnan(batch.item())  # a batch of padding only
        )


def test_training_loop_surface() -> None:
    logits, labels = _data()
    metric = TorchMetric(xs.CrossEntropy(input="logits", ignore_index=-100))
    x, y = torch.from_numpy(logits[:60]), torch.from_numpy(labels[:60])
    step = metric(x, y)
    assert step.dtype == torch.float64 and step.device.type == "cpu"
    assert math.isclose(step.item(), F.cross_entropy(x, y).item(), rel_tol=1e-12)
    metric.update(torch.from_numpy(logits[60:]), torch.from_numpy(labels[60:]))
    report = metric.report()
    assert math.isclose(
        metric.compute().item(),
        F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels)).item(),
        rel_tol=1e-12,
    )
    # a flat dict of numbers for loggers, and a readable print
    scalars = report.scalars("val/")
    assert all(isinstance(v, float | int) for v in scalars.values())
    assert scalars["val/loss"] == report.loss and scalars["val/ci95_low"] == report.ci95[0]
    assert "val/kl" not in scalars  # hard labels: undefined fields are left out
    text = str(report).splitlines()
    assert text[0].split() == ["loss", f"{report.loss:.6g}"] and len(text) == len(scalars) - 1
    assert "<table>" in report._repr_html_()
    # state round trip, reset, the device
    saved = metric.state_dict()
    assert metric.reset().report().count == 0
    metric.load_state_dict(saved)
    assert metric.report() == report
    assert metric.to("cpu").metric.engine == "cpu"
    plain = xs.CrossEntropy()
    assert math.isclose(plain([[0.25, 0.75]], [1]), -math.log(0.75), rel_tol=1e-15)
    assert plain.compute().count == 1  # the call updated the metric
