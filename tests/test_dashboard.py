"""The asv dashboard renders with no network: published, vendored, drawn in Chromium.

A throwaway git project of five commits with one parametrized ``track_speedup_vs_torch``
benchmark (its value made up from the commit, so the run takes seconds) stands in for
xentstream's suite, which this test does not run: what is under test is
``asv_bench/dashboard.py``'s publishing, vendoring and serving, and the page a person
would look at. Chromium is Debian's (``.ci/run`` installs it), driven by Playwright;
every request that leaves the test's 127.0.0.1 server is refused, as offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ASV_BENCH = Path(__file__).resolve().parent.parent / "asv_bench"
if str(ASV_BENCH) not in sys.path:
    sys.path.insert(0, str(ASV_BENCH))

import dashboard  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
BENCHMARK = "speed.Speed.track_speedup_vs_torch"

SPEED = '''
import os


class Speed:
    params = (["small", "large"],)
    param_names = ("case",)

    def track_speedup_vs_torch(self, case):
        """torch's time / ours: higher is better (made up here: it rises commit by commit)."""
        step = int(os.environ["DEMO_STEP"])
        return 0.6 + 0.3 * step + (0.2 if case == "large" else 0.0)

    track_speedup_vs_torch.unit = "speedup (higher is better)"
'''


def _git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    done = subprocess.run(
        ["git", "-C", str(repo), *identity, *args], capture_output=True, text=True, check=True
    )
    return done.stdout


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """html/ of a five-commit project, published and vendored by dashboard.py."""
    repo = tmp_path_factory.mktemp("project")
    _git(repo, "init", "-q", "-b", "main")
    for i in range(5):
        (repo / "counter.txt").write_text(f"{i}\n")
        _git(repo, "add", "counter.txt")
        _git(repo, "commit", "-q", "-m", f"commit {i}")
    conf = repo / "bench"
    (conf / "benchmarks").mkdir(parents=True)
    (conf / "benchmarks" / "__init__.py").write_text("")
    (conf / "benchmarks" / "speed.py").write_text(SPEED)
    config = {
        "version": 1,
        "project": "demo",
        "repo": "..",
        "branches": ["main"],
        "environment_type": "virtualenv",
        "benchmark_dir": "benchmarks",
        "results_dir": "results",
        "html_dir": "html",
        "env_dir": "env",
    }
    (conf / "asv.conf.json").write_text(json.dumps(config))
    # asv keeps its machine description in ~/.asv-machine.json: a home of the test's own
    env = {**os.environ, "HOME": str(repo)}
    dashboard.asv("machine", "--yes", "--machine", "ci", conf_dir=conf, env=env)
    for step, commit in enumerate(reversed(dashboard.commits(repo, count=5))):
        dashboard.asv(
            "run", "--python=same", "--quick", "--machine", "ci",
            f"--set-commit-hash={commit}", conf_dir=conf, env={**env, "DEMO_STEP": str(step)},
        )  # fmt: skip
    return dashboard.publish(conf)


@pytest.fixture(scope="module")
def seen(published: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not CHROMIUM.exists():
        raise AssertionError(
            f"{CHROMIUM} is missing: .ci/run installs Debian's chromium (apt-get install chromium)"
        )
    shot = tmp_path_factory.mktemp("shot") / "dashboard.png"
    with dashboard.server(published) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{httpd.server_address[1]}/#{BENCHMARK}"
            result = dashboard.look(url, screenshot=shot, chromium=str(CHROMIUM))
        finally:
            httpd.shutdown()
    return {**result, "screenshot": shot}


def test_published_pages_load_nothing_from_outside(published: Path) -> None:
    index = (published / "index.html").read_text()
    assert "https://" not in index.split("<body", 1)[0]  # no CDN in <head>
    assert "integrity=" not in index
    assert (published / "vendor" / "jquery" / "jquery.min.js").stat().st_size > 50_000
    assert "from: 1, to: 1" in (published / "graphdisplay.js").read_text()


def test_graph_is_drawn_offline(seen: dict) -> None:
    assert seen["refused"] == [], "the page asked for addresses outside 127.0.0.1"
    assert seen["errors"] == []
    assert "failed to load" not in seen["text"].lower()
    assert "error fetching content" not in seen["text"].lower()
    pixels = seen["pixels"]
    assert pixels is not None, "no graph canvas"
    # five commits x two cases: lines and points, well beyond the axes' own pixels
    assert pixels["drawn"] > 2_000, pixels
    assert pixels["line"] > 200, "no line at 1.0 on the speedup graph"
    assert seen["screenshot"].stat().st_size > 10_000


def test_localize_refuses_an_unknown_script() -> None:
    html = '<script src="https://cdn.example.invalid/new-thing.min.js"></script>'
    with pytest.raises(dashboard.DashboardError, match="new-thing"):
        dashboard.localize(html)


def test_a_tampered_tarball_is_refused(tmp_path: Path) -> None:
    package = dashboard.VENDORED[0]
    cached = tmp_path / f"{package.name}-{package.version}.tgz"
    cached.write_bytes(b"not the tarball")
    tampered = dashboard.Vendored(package.name, package.version, "sha512-AAAA", package.files)
    with pytest.raises(dashboard.DashboardError, match="checksum"):
        dashboard.fetch_tarball(tampered, cache=tmp_path)
