"""Build the asv performance dashboard over a run of commits and serve it, offline.

    python asv_bench/dashboard.py                    # fast: last 5 commits of main, 3 benchmarks
    python asv_bench/dashboard.py --full             # every benchmark, every sample
    python asv_bench/dashboard.py --commits 10       # the last 10 first-parent commits of main
    python asv_bench/dashboard.py --range A..B       # the first-parent commits of a range
    python asv_bench/dashboard.py --no-run           # publish what asv_bench/results holds
    python asv_bench/dashboard.py --no-serve         # build html/ and stop

Four steps, each also usable on its own (``tests/test_dashboard.py`` calls them):

1. ``asv run`` over the commits, each installed from its own wheel into the virtualenv
   that ``asv.conf.json`` describes (built once, kept in ``asv_bench/env``). In fast
   mode, benchmarks already measured are skipped (``--skip-existing``), so a rerun only
   adds the new commits; ``--full`` measures everything anew.
2. ``asv publish`` into ``asv_bench/html``.
3. Vendoring: asv's page loads jQuery, flot, Bootstrap, stupid-table and blueimp-md5 from
   public CDNs, so offline it shows only "failed to load". :data:`VENDORED` pins each
   package of the npm registry that holds those files, with the sha512 of its tarball;
   ``npm pack`` fetches each one once (into ``~/.cache/xentstream/asv-vendor``), the
   checksum is verified, the files are copied into ``html/vendor/`` and ``index.html`` is
   pointed at them, the CDN ``integrity=`` attributes removed (they pin the CDN's
   minified builds, not these files). An external script left over, as a newer asv
   might add, is an error rather than a page that breaks offline. ``graphdisplay.js``
   gets a line at 1.0 on ``speedup`` graphs (peer time / ours: above the line,
   xentstream is faster). ``asv publish`` rewrites all of html/, so this runs after it.
4. Serving on http://127.0.0.1:PORT (the page fetches its JSON with XHR, which browsers
   refuse over ``file://``).

Fast mode took 1 min 54 s over 5 commits on the 2-core development machine (shared
with other jobs) once the environment was built; building it (numba, polars, torch,
... into ``asv_bench/env``) takes minutes more, once. Each commit's install compiles
its kernels afresh (numba's cache lives beside the installed sources), which is most
of a fast run.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

ASV_BENCH = Path(__file__).resolve().parent

#: Fast mode: the headline speedup and the absolute times beside it, on one case (each
#: commit's install compiles its kernels afresh: a second case doubles that), one sample.
FAST_BENCHMARKS = (r"^peers\.(Ours\.time_xentstream|VsTorch\.\w+)\('logits-hard-C10'\)$",)


@dataclass(frozen=True)
class Vendored:
    """One npm package: its pinned version, tarball checksum and the files the page needs."""

    name: str
    version: str
    integrity: str  # npm's dist.integrity: "sha512-" + base64 of the tarball's SHA-512
    files: dict[str, str]  # path inside the tarball's package/ -> path under html/vendor/


VENDORED = (
    Vendored(
        "jquery",
        "3.3.1",
        "sha512-Ubldcmxp5np52/ENotGxlLe6aGMvmF4R8S6tZjsP6Knsaxd/xp3Zrh50cG93lR6nPXyUFwzN3ZSOQI0wRJNdGg==",
        {"dist/jquery.min.js": "jquery/jquery.min.js"},
    ),
    Vendored(
        "flot",
        "0.8.3",
        "sha512-xg2otcTJDvS+ERK+my4wxG/ASq90QURXtoM4LhacCq0jQW2jbyjdttbRNqU2cPykrpMvJ6b2uSp6SAgYAzj9tQ==",
        {
            f"jquery.flot{part}.js": f"flot/jquery.flot{part}.js"
            for part in ("", ".time", ".selection", ".categories")
        },
    ),
    Vendored(
        "flot-orderbars",
        "1.0.0",
        "sha512-Jv51fvzevUjNXEeozpwEKfPjhiZhfiJddv0WHjduUTCmSF+7T5K7C9c9Y1wIVmUhDBv5fLMjgbwKecT0GIKPZA==",
        {"js/jquery.flot.orderBars.js": "flot/jquery.flot.orderBars.js"},
    ),
    Vendored(
        # asv pins 1.0.1 from a CDN; the npm registry has no 1.0.1, and 1.1.3 keeps its API.
        "stupid-table-plugin",
        "1.1.3",
        "sha512-2Vk7XouQPxUQPRe9w0Fu7ZZ8kHLK7rDoLMsCgtKxRNJ7f4dSOGvW9CkHsq5wD6QsaEnWoyLBYH3xOEsrK3yWBg==",
        {"stupidtable.min.js": "stupidtable/stupidtable.min.js"},
    ),
    Vendored(
        "blueimp-md5",
        "2.19.0",
        "sha512-DRQrD6gJyy8FbiE4s+bDoXS9hiW3Vbx5uCdwvcCf3zLHL+Iv7LtGHLpr+GZV8rHG8tK766FGYBwRbu8pELTt+w==",
        {"js/md5.min.js": "blueimp-md5/md5.min.js"},
    ),
    Vendored(
        "bootstrap",
        "3.1.1",
        "sha512-TAzqS8E/ISpVHP29gYhy+1NSV+FJwApDVQhDfgLYsIuUDJiqJzH2DfORN5tiu+Ie2iBLrzEG34t4Rf465cigqg==",
        {
            "dist/js/bootstrap.min.js": "bootstrap/js/bootstrap.min.js",
            "dist/css/bootstrap.min.css": "bootstrap/css/bootstrap.min.css",
            # bootstrap.min.css loads its icon font from ../fonts/
            **{
                f"dist/fonts/glyphicons-halflings-regular.{ext}": (
                    f"bootstrap/fonts/glyphicons-halflings-regular.{ext}"
                )
                for ext in ("eot", "svg", "ttf", "woff")
            },
        },
    ),
)

#: The last path component of each CDN address in asv's index.html -> the vendored file.
#: asv links minified builds; flot's npm package ships only the readable ones.
CDN_FILES = {
    "jquery-3.3.1.min.js": "jquery/jquery.min.js",
    "jquery.flot.min.js": "flot/jquery.flot.js",
    "jquery.flot.time.min.js": "flot/jquery.flot.time.js",
    "jquery.flot.selection.min.js": "flot/jquery.flot.selection.js",
    "jquery.flot.categories.min.js": "flot/jquery.flot.categories.js",
    "jquery.flot.orderBars.js": "flot/jquery.flot.orderBars.js",
    "stupidtable.min.js": "stupidtable/stupidtable.min.js",
    "md5.min.js": "blueimp-md5/md5.min.js",
    "bootstrap.min.js": "bootstrap/js/bootstrap.min.js",
    "bootstrap.min.css": "bootstrap/css/bootstrap.min.css",
}

#: Inserted into graphdisplay.js after the y axis is set up: a line at 1.0 on the
#: speedup graphs, where above means xentstream is faster.
SPEEDUP_LINE = """
        // xentstream: a line at 1.0 on "speedup" graphs (peer time / ours: above, ours is
        // faster), the y axis stretched to show it even when every point is on one side
        if (!reference_scale && /speedup/.test(unit) && /higher is better/.test(unit)) {
            var low = 1, high = 1;
            $.each(graphs, function(i, series) {
                $.each(series.data, function(j, point) {
                    if (point[1] !== null) {
                        low = Math.min(low, point[1]);
                        high = Math.max(high, point[1]);
                    }
                });
            });
            options.yaxis.min = low - 0.05 * (high - low);
            options.yaxis.max = high + 0.05 * (high - low);
            markings.push({ color: "#17becf", lineWidth: 2, yaxis: { from: 1, to: 1 } });
        }
"""
GRAPH_ANCHOR = "        handle_y_scale(options);\n"

_EXTERNAL_TAG = re.compile(r"<(script|link)\b[^>]*?(?:src|href)=\"(https?://[^\"]+)\"[^>]*>")
_CDN_ATTRIBUTES = re.compile(r"\s(?:integrity|crossorigin|referrerpolicy)=\"[^\"]*\"")


class DashboardError(RuntimeError):
    """A step of the build failed; the message says which and what to do."""


# -- vendoring --------------------------------------------------------------------------------


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xentstream" / "asv-vendor"


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch_tarball(package: Vendored, cache: Path | None = None) -> bytes:
    """The package's npm tarball, from the cache or ``npm pack``; checksum verified."""
    cache = cache_dir() if cache is None else cache
    path = cache / f"{package.name}-{package.version}.tgz"
    if not (path.exists() and _integrity(path.read_bytes()) == package.integrity):
        npm = shutil.which("npm")
        if npm is None:
            raise DashboardError("npm not found: the page's scripts come from the npm registry")
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            done = subprocess.run(
                [npm, "pack", f"{package.name}@{package.version}", "--json", "--silent"],
                cwd=scratch,
                capture_output=True,
                text=True,
                check=False,
            )
            packed = list(Path(scratch).glob("*.tgz"))
            if done.returncode or len(packed) != 1:
                raise DashboardError(
                    f"npm pack {package.name}@{package.version} failed:\n{done.stderr}"
                )
            packed[0].replace(path)
    data = path.read_bytes()
    if _integrity(data) != package.integrity:
        path.unlink()
        raise DashboardError(
            f"{package.name}@{package.version}: checksum {_integrity(data)} is not the "
            f"pinned {package.integrity}"
        )
    return data


def vendor(html_dir: Path, cache: Path | None = None) -> list[Path]:
    """Copy the page's scripts into ``html/vendor/`` and point the published pages at them."""
    import io

    written = []
    for package in VENDORED:
        data = fetch_tarball(package, cache)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member, target in package.files.items():
                extracted = archive.extractfile(f"package/{member}")
                if extracted is None:
                    raise DashboardError(f"{package.name}: {member} is not a file")
                out = html_dir / "vendor" / target
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(extracted.read())
                written.append(out)
    for page in sorted(html_dir.glob("*.html")):
        page.write_text(localize(page.read_text(encoding="utf-8")), encoding="utf-8")
    graph = html_dir / "graphdisplay.js"
    if graph.exists():
        graph.write_text(add_speedup_line(graph.read_text(encoding="utf-8")), encoding="utf-8")
    return written


def localize(html: str) -> str:
    """``html`` with every CDN script and stylesheet pointed at ``vendor/``.

    Raises :class:`DashboardError` for an external address :data:`CDN_FILES` does not
    know, so that the page never silently depends on the network.
    """

    def replace(match: re.Match[str]) -> str:
        url = match.group(2)
        name = url.rstrip("/").rsplit("/", 1)[-1]
        if name not in CDN_FILES:
            raise DashboardError(f"the published page loads {url}: add it to VENDORED")
        tag = match.group(0).replace(url, f"vendor/{CDN_FILES[name]}")
        return _CDN_ATTRIBUTES.sub("", tag)

    return _EXTERNAL_TAG.sub(replace, html)


def add_speedup_line(source: str) -> str:
    if SPEEDUP_LINE in source:
        return source
    if GRAPH_ANCHOR not in source:
        raise DashboardError("graphdisplay.js changed: the speedup line has no place to go")
    return source.replace(GRAPH_ANCHOR, GRAPH_ANCHOR + SPEEDUP_LINE, 1)


# -- running and publishing -------------------------------------------------------------------


def asv(*args: str, conf_dir: Path = ASV_BENCH, env: dict[str, str] | None = None) -> None:
    """Run asv (the one beside this Python) in ``conf_dir``; raise on failure."""
    command = [sys.executable, "-m", "asv", *args]
    print("+", " ".join(command[2:]), flush=True)
    done = subprocess.run(command, cwd=conf_dir, env=env, check=False)
    if done.returncode:
        raise DashboardError(f"{' '.join(command[2:])} exited {done.returncode}")


def commits(repo: Path, *, count: int | None = None, span: str | None = None) -> list[str]:
    """First-parent commits (newest first): the last ``count`` of main, or a range.

    First parents only: a merge brings one point to main's graph, not every commit of
    the branch it merged.
    """
    command = ["git", "-C", str(repo), "rev-list", "--first-parent"]
    command += [span] if span else ["-n", str(count), "main"]
    listed = subprocess.run(command, capture_output=True, text=True, check=True)
    return listed.stdout.split()


def run(hashes: list[str], *, full: bool, conf_dir: Path = ASV_BENCH) -> None:
    """``asv run`` over ``hashes`` in the built environments of ``asv.conf.json``."""
    asv("machine", "--yes", conf_dir=conf_dir)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        listing.write("\n".join(hashes) + "\n")
    try:
        args = ["run", f"HASHFILE:{listing.name}", "--show-stderr"]
        if not full:
            # a fast rerun adds only what is missing; a full run measures everything anew
            args += ["--quick", "--skip-existing"]
            args += [f"--bench={regex}" for regex in FAST_BENCHMARKS]
        asv(*args, conf_dir=conf_dir)
    finally:
        os.unlink(listing.name)


def publish(conf_dir: Path = ASV_BENCH, cache: Path | None = None) -> Path:
    """``asv publish``, then :func:`vendor`; returns the html directory."""
    asv("publish", conf_dir=conf_dir)
    config = json.loads(_strip_comments((conf_dir / "asv.conf.json").read_text()))
    html_dir = conf_dir / config.get("html_dir", "html")
    vendor(html_dir, cache)
    return html_dir


def _strip_comments(text: str) -> str:
    # asv.conf.json allows // comments (asv reads it as JSON with them removed)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per request drowns the address


def server(html_dir: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    """An HTTP server of ``html_dir`` on 127.0.0.1 (port 0: any free one), not started."""
    handler = functools.partial(_QuietHandler, directory=str(html_dir))
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


# -- looking at it in a browser ---------------------------------------------------------------

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # run as root in CI
    "--disable-gpu",
    # without these, Chromium keeps trying to reach Google's hosts on a closed network
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)

#: Counts, in the main graph's canvas, the pixels that are not background, and those of
#: the speedup line's colour (#17becf); the axis labels are drawn on the canvas too.
_CANVAS_PIXELS = """() => {
    const canvas = document.querySelector('#main-graph canvas.flot-base');
    if (!canvas) return null;
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let drawn = 0, line = 0;
    for (let i = 0; i < data.length; i += 4) {
        if (data[i + 3] > 0 && (data[i] < 240 || data[i + 1] < 240 || data[i + 2] < 240)) drawn++;
        if (Math.abs(data[i] - 23) < 12 && Math.abs(data[i + 1] - 190) < 12
            && Math.abs(data[i + 2] - 207) < 12) line++;
    }
    return {drawn: drawn, line: line, width: canvas.width, height: canvas.height};
}"""


def look(url: str, screenshot: Path | None = None, chromium: str = "/usr/bin/chromium") -> dict:
    """Open ``url`` (a graph of the dashboard) in headless Chromium with no network.

    Every request that does not go to ``url``'s own server is refused, as on a machine
    with no route out. Returns what a person would check: the graph canvas's pixel
    counts (None when no graph was drawn), the page's text, the JavaScript errors and
    the refused addresses. Needs the ``playwright`` package (it drives Debian's
    ``chromium``; it downloads no browser of its own here).
    """
    from playwright.sync_api import sync_playwright

    origin = "/".join(url.split("/")[:3]) + "/"
    refused: list[str] = []
    errors: list[str] = []

    def route(request_route: object) -> None:
        request = request_route.request  # type: ignore[attr-defined]
        if request.url.startswith(origin):
            request_route.continue_()  # type: ignore[attr-defined]
        else:
            refused.append(request.url)
            request_route.abort()  # type: ignore[attr-defined]

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=list(CHROMIUM_FLAGS))
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.route("**/*", route)
            page.goto(url)
            try:
                page.wait_for_selector("#main-graph canvas.flot-base", timeout=15_000)
                page.wait_for_timeout(500)  # flot draws after the canvas is inserted
            except Exception as error:  # a timeout: the caller sees "no graph canvas"
                errors.append(f"no graph canvas: {error}")
            pixels = page.evaluate(_CANVAS_PIXELS)
            text = page.inner_text("body")
            if screenshot is not None:
                page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    return {"pixels": pixels, "text": text, "errors": errors, "refused": refused}


# -- command line -----------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--commits", type=int, default=5, help="last N commits of main (5)")
    which.add_argument("--range", dest="span", metavar="A..B", help="a git range instead")
    parser.add_argument("--full", action="store_true", help="every benchmark, all samples")
    parser.add_argument("--no-run", action="store_true", help="publish existing results only")
    parser.add_argument("--no-serve", action="store_true", help="build html/ and exit")
    parser.add_argument("--port", type=int, default=8080, help="port on 127.0.0.1 (8080)")
    parser.add_argument(
        "--screenshot",
        type=Path,
        metavar="PNG",
        help="save a headless Chromium screenshot of --graph's page here (needs playwright)",
    )
    parser.add_argument(
        "--graph",
        default="peers.VsTorch.track_speedup_vs_torch",
        help="the benchmark --screenshot shows",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        if not args.no_run:
            hashes = commits(ASV_BENCH.parent, count=args.commits, span=args.span)
            print(f"{len(hashes)} commits, {'full' if args.full else 'fast'} mode", flush=True)
            run(hashes, full=args.full)
        html_dir = publish()
    except DashboardError as error:
        print(f"dashboard: {error}", file=sys.stderr)
        return 1
    if args.screenshot:
        with server(html_dir) as httpd:
            threading.Thread(target=httpd.serve_forever, daemon=True).start()
            url = f"http://127.0.0.1:{httpd.server_address[1]}/#{args.graph}"
            seen = look(url, args.screenshot)
            httpd.shutdown()
        print(f"screenshot in {args.screenshot}: {seen['pixels']}, errors {seen['errors']}")
    if args.no_serve:
        print(f"dashboard built in {html_dir}")
        return 0
    with server(html_dir, args.port) as httpd:
        print(f"dashboard at http://127.0.0.1:{httpd.server_address[1]}/ (Ctrl-C stops)")
        try:
            httpd.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
