"""The README's examples run and print what it shows; the API reference builds cleanly."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from stream_support import child_env

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end >= 0 else None]


def _blocks(text: str, language: str) -> list[str]:
    """The fenced code blocks of ``text`` in ``language`` ("" for plain blocks)."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.DOTALL | re.MULTILINE)
    return [body for lang, body in blocks if lang == language]


def test_quickstart_prints_what_the_readme_shows() -> None:
    quickstart = _section("Quickstart")
    command = next(
        line
        for line in _blocks(quickstart, "bash")[0].splitlines()
        if "xentstream evaluate" in line
    )
    argv = shlex.split(command.split(".venv/bin/xentstream ", 1)[1])
    shown = _blocks(quickstart, "")[0]
    done = subprocess.run(
        [sys.executable, "-m", "xentstream", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == shown.strip()


def _run_python(code: str, cwd: Path) -> str:
    """Run ``code`` in a child Python (warnings as errors); its stdout."""
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=child_env(),
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_use_examples_run(tmp_path: Path) -> None:
    code = "\n".join(_blocks(_section("Use"), "python"))
    assert "xs.evaluate(records" in code  # the blocks were found
    _run_python(code, tmp_path)


def test_per_class_calibration_example_runs(tmp_path: Path) -> None:
    """The comparison section's per-class calibration block runs as it stands."""
    section = _section("Is the new model better, and is it calibrated?")
    (code,) = [block for block in _blocks(section, "python") if "per_class=True" in block]
    shown = _run_python(code, tmp_path)
    assert "ece" in shown and "confidence" in shown


def test_api_reference_builds_without_warnings(tmp_path: Path) -> None:
    command = next(
        line
        for line in _blocks(_section("API reference"), "bash")[0].splitlines()
        if "pdoc" in line
    )
    argv = shlex.split(command.split("python ", 1)[1])
    argv[argv.index("site/api")] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-W", "error", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
        timeout=300,
        check=False,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    page = (tmp_path / "xentstream.html").read_text(encoding="utf-8")
    for name in ("CrossEntropy", "evaluate", "Report", "GroupedReport", "binary_cross_entropy"):
        assert f'id="{name}"' in page, name
    assert 'id="parameters"' in page  # numpydoc sections rendered
    # internals stay out of the reference (and of help())
    documented = set(re.findall(r'id="Metric\.(\w+)"', page))
    assert {"update", "merge", "compute", "state_dict"} <= documented
    assert not documented & {"update_batch", "absorb_group_sums", "load_state_of"}
    assert (tmp_path / "xentstream" / "dask.html").exists()


def test_language_models_section_shows_the_example_output() -> None:
    """The README shows what examples/char_lm.py prints (numbers masked: training
    arithmetic and the standard library's docstrings vary across versions)."""
    import pytest

    pytest.importorskip("torch")
    shown = _blocks(_section("Language models"), "")[0]
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "char_lm.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=child_env(),
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    def masked(text: str) -> list[str]:
        text = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", text)
        text = re.sub(r"[─═]+", "-", text)  # table widths follow the numbers
        return [" ".join(line.split()) for line in text.splitlines()]

    assert masked(done.stdout.strip()) == masked(shown.strip())
