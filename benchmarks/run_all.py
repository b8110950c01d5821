"""Run every benchmark, print every figure beside its goal, and rewrite the results table of the docs.

    python benchmarks/run_all.py            # what `make bench` runs: --quick figures, about 6 minutes
    python benchmarks/run_all.py --full     # more repetitions, 1M tokens of activations
    python benchmarks/run_all.py --no-docs  # leave docs/performance.md alone

Each script runs in its own process (``--threads 1 --json ...``); the table between
the markers of ``docs/performance.md`` is replaced by the figures of this run.
Exit status 1 when a script fails or a goal is missed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness import Figure, load_figures  # noqa: E402

#: The scripts, in the order they run, with what each measures.
SCRIPTS = {
    "bench_trace": "fixed cost of a trace (CPU)",
    "bench_memory": "peak memory of a trace",
    "bench_tools": "logit lens, patchscopes, activations",
    "bench_collect": "activation collection to disk",
    "bench_cache": "run_with_cache and attribution",
    "bench_patching": "activation and attribution patching",
}
DOCS = HERE.parent / "docs" / "performance.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def run_script(name: str, full: bool, out: Path) -> tuple[list[Figure], str | None, float]:
    command = [sys.executable, str(HERE / f"{name}.py"), "--threads", "1", "--json", str(out)]
    if not full:
        command.append("--quick")
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), check=False)
    seconds = time.perf_counter() - start
    if not out.exists():
        return (
            [],
            (result.stderr or result.stdout).strip()[-2000:] or f"exit status {result.returncode}",
            seconds,
        )
    return load_figures(out), None, seconds


def table(results: dict[str, list[Figure]], full: bool) -> str:
    mode = "--full" if full else "--quick"
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"(one torch thread), Python {platform.python_version()}: `python benchmarks/run_all.py"
        f"{' --full' if full else ''}` ({mode} figures).",
        "",
        "| Figure | Value | Goal | Setting |",
        "|---|---:|---|---|",
    ]
    for name, figures in results.items():
        lines.append(f"| **{name}** ({SCRIPTS[name]}) | | | |")
        for f in figures:
            value = f"{f.value:.3f}" if abs(f.value) < 100 else f"{f.value:,.0f}"
            goal = "" if not f.goal else f"{f.goal} {f.unit}: {'met' if f.ok else '**missed**'}"
            lines.append(f"| {f.name.strip()} | {value} {f.unit} | {goal} | {f.note} |")
    return "\n".join(lines)


def rewrite_docs(text: str) -> None:
    page = DOCS.read_text(encoding="utf-8")
    if START not in page or END not in page:
        raise SystemExit(f"{DOCS} has no {START} ... {END} section to rewrite")
    head, rest = page.split(START, 1)
    _, tail = rest.split(END, 1)
    DOCS.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the scripts' full runs instead of --quick")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/performance.md")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {', '.join(SCRIPTS)}")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(SCRIPTS)
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        parser.error(f"unknown script(s) {unknown}; known: {', '.join(SCRIPTS)}")
    results: dict[str, list[Figure]] = {}
    failed = False
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            figures, error, seconds = run_script(name, args.full, Path(folder) / f"{name}.json")
            print(f"\n# {name}: {SCRIPTS[name]} ({seconds:.0f} s)", flush=True)  # noqa: T201
            if error is not None:
                print(f"FAILED:\n{error}", flush=True)  # noqa: T201
                failed = True
                continue
            results[name] = figures
            for figure in figures:
                print(figure.line(), flush=True)  # noqa: T201 - a benchmark script prints
    missed = [f.name for figures in results.values() for f in figures if f.ok is False]
    print(f"\n{sum(f.ok is True for v in results.values() for f in v)} goals met, {len(missed)} missed")  # noqa: T201
    if not args.no_docs and not args.only and not failed:
        rewrite_docs(table(results, args.full))
        print(f"rewrote the results table in {DOCS}")  # noqa: T201
    return 1 if failed or missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
