"""Render an HTML page (the demo report by default) in headless Chromium and save a PNG.

Example::

    $ python scripts/screenshot_report.py                       # runs the demo, shoots its report
    $ python scripts/screenshot_report.py --html demo-output/report.html --png report.png
    $ python scripts/screenshot_report.py --html site/index.html --png docs.png --width 1280

Used to check the layout of the report (and of the docs site) in a real browser: titles,
tick labels and axis titles must not overlap. Needs a Chromium binary (Debian: ``apt-get
install chromium``); ``--chromium`` picks another one. The browser runs with a fresh
profile in a temporary folder and no network access of its own (no updates, no sync, no
background requests), and is killed if it takes longer than ``--timeout`` seconds.

Exit status: 0 when the PNG was written, 1 otherwise (the message says why), 2 when no
Chromium was found.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def find_chromium(explicit: str | None = None) -> str | None:
    """The path of a Chromium binary, or ``None``."""
    if explicit:
        return shutil.which(explicit) or (explicit if os.path.isfile(explicit) else None)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(
    html: str | os.PathLike[str],
    png: str | os.PathLike[str],
    width: int = 1200,
    height: int = 4000,
    chromium: str | None = None,
    timeout: float = 120.0,
) -> Path:
    """Render ``html`` in headless Chromium at ``width`` x ``height`` pixels and write ``png``.

    Example::

        >>> screenshot("demo-output/report.html", "report.png")   # doctest: +SKIP

    Args:
        html: The page to render (a local file).
        png: The screenshot to write.
        width: Window width in pixels.
        height: Window height in pixels (the page is cut there; make it tall enough).
        chromium: The browser binary (default: the first of `CANDIDATES` on the PATH).
        timeout: Seconds before the browser is killed.

    Returns:
        The PNG's path.

    Raises:
        FileNotFoundError: No Chromium, or no page at ``html``.
        RuntimeError: The browser failed or wrote no image.
    """
    binary = find_chromium(chromium)
    if binary is None:
        raise FileNotFoundError("no Chromium found (apt-get install chromium, or pass --chromium PATH)")
    page = Path(html).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"no page at {page}")
    out = Path(png).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.unlink()
    with tempfile.TemporaryDirectory(prefix="uniterp-chromium-") as profile:
        command = [
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={out}",
            "--virtual-time-budget=5000",  # let plotly draw before the shot
            page.as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 or not out.is_file():
        raise RuntimeError(
            f"{binary} exited with {result.returncode} and wrote no screenshot:\n{result.stderr[-2000:]}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", help="page to render (default: run the demo into a temporary folder)")
    parser.add_argument("--png", default="report.png", help="screenshot file (default: %(default)s)")
    parser.add_argument("--width", type=int, default=1200, help="window width (default: %(default)s)")
    parser.add_argument("--height", type=int, default=5200, help="window height (default: %(default)s)")
    parser.add_argument("--chromium", help="the browser binary (default: found on the PATH)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds (default: %(default)s)")
    args = parser.parse_args(argv)
    if find_chromium(args.chromium) is None:
        print("no Chromium found: apt-get install chromium, or pass --chromium PATH", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="uniterp-report-") as folder:
        html = args.html
        if html is None:
            from uniterp.demo import run_demo

            html = os.path.join(folder, "report.html")
            if run_demo(html=html, echo=lambda _line: None) != 0:
                print("the demo failed; see `uniterp demo`", file=sys.stderr)
                return 1
        try:
            path = screenshot(html, args.png, args.width, args.height, args.chromium, args.timeout)
        except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as error:
            print(f"screenshot failed: {error}", file=sys.stderr)
            return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
