"""The examples run as shipped (in a subprocess) and say what they claim."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

_EPOCH = re.compile(
    r"^epoch\s+(?P<epoch>\d+)\s+train (?P<train>[0-9.]+) \+/- (?P<stderr>[0-9.]+)\s+"
    r"last-(?P<window>\d+) (?P<last>[0-9.]+)\s+valid (?P<valid>[0-9.]+)\s+"
    r"valid-accuracy (?P<accuracy>[0-9.]+)$"
)


def _run(script: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    return done.stdout


def test_training_loop_loss_decreases() -> None:
    output = _run("training_loop.py")
    epochs = [m.groupdict() for m in map(_EPOCH.match, output.splitlines()) if m]
    assert len(epochs) >= 5, output
    assert [int(e["epoch"]) for e in epochs] == list(range(1, len(epochs) + 1))
    train = [float(e["train"]) for e in epochs]
    valid = [float(e["valid"]) for e in epochs]
    # seeded minibatch SGD on a convex loss with a small step: every epoch improves
    assert all(b < a for a, b in itertools.pairwise(train)), train
    assert all(b < a for a, b in itertools.pairwise(valid)), valid
    assert valid[-1] < 0.5 * valid[0], valid
    assert all(float(e["stderr"]) > 0.0 for e in epochs)
    assert all(0.0 < float(e["last"]) < 5.0 for e in epochs)
    assert float(epochs[-1]["accuracy"]) > 0.9


def test_quickstart_streams_the_one_shot_bits() -> None:
    output = _run("quickstart.py")
    assert "streamed == one-shot (bitwise): True" in output


def test_dask_cluster_equals_one_process() -> None:
    pytest.importorskip("distributed")
    pytest.importorskip("dask.dataframe")
    output = _run("dask_cluster.py")
    assert "cluster == one process (bitwise): True" in output


def test_char_lm_both_dumps_agree() -> None:
    pytest.importorskip("torch")
    from stream_support import child_env

    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "char_lm.py")],
        capture_output=True,
        text=True,
        timeout=600,
        env=child_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    output = done.stdout
    assert "same within SPEC section 3 (relative 1e-12): True" in output
    assert "per-document losses agree too (relative 1e-12): True" in output
    full = re.search(r"perplexity from full logits:\s+([0-9.]+)", output)
    tokens = re.search(r"perplexity from token log-probs:\s+([0-9.]+)", output)
    assert full and tokens and full[1] == tokens[1], output
    errors = re.search(r"\+/- ([0-9.]+) per token, \+/- ([0-9.]+) clustered", output)
    assert errors and float(errors[2]) > float(errors[1]) > 0.0, output  # correlated tokens
    # a trained model: well below the uniform perplexity over its ~90 characters
    assert float(tokens[1]) < 30.0, output


def test_compare_models_prints_what_the_readme_shows() -> None:
    pytest.importorskip("sklearn")
    output = _run("compare_models.py")
    readme = (EXAMPLES.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("\n## Is the new model better, and is it calibrated?\n")
    section = readme[start : readme.index("\n## ", start + 1)]
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)
    shown = [body for language, body in blocks if language == ""]
    assert shown and shown[0].strip() == output.strip()
    assert "logistic is better" in output
