"""What the benchmark scripts share: figures with goals, interleaved timing, devices, JSON output.

Every script measures in one process, times its candidates in turn within each
repetition (so drifts of a shared machine hit all of them alike), reports medians,
and describes each result as a `Figure`: a value, its unit, and the goal it is held
to. ``--json PATH`` writes the figures for ``benchmarks/run_all.py``, which prints
them all and rewrites the results table of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

#: Eight short prompts of different lengths (left-padded together), for the trace and memory benchmarks.
PROMPTS = (
    "The Eiffel Tower is in the city of",
    "The capital of France is Paris, and the capital of Japan is",
    "She said that he would come back tomorrow morning, but",
    "one two three four five six seven",
    "The cat sat on the mat with a dog and",
    "In 1969 the first people walked on the Moon, and",
    "hello world, the weather today is",
    "A B C D E F G H",
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Figure:
    """One measured figure.

    Attributes:
        name: What was measured.
        value: The number.
        unit: ``"x"`` (a ratio), ``"ms"``, ``"MiB"``, ``"tok/s"`` ...
        goal: ``"<= 1.05"``, ``">= 0.9"`` or ``""`` (shown for information).
        note: The setting (shape, batch, device) in a few words.
    """

    name: str
    value: float
    unit: str = "x"
    goal: str = ""
    note: str = ""

    @property
    def ok(self) -> bool | None:
        """Whether the goal is met (``None`` without a goal)."""
        if not self.goal:
            return None
        sign, bound = self.goal.split()
        return self.value <= float(bound) if sign == "<=" else self.value >= float(bound)

    def line(self) -> str:
        """One printable line: the figure, and its goal with the verdict."""
        verdict = (
            "" if self.ok is None else f"  (goal {self.goal}{self.unit}: {'met' if self.ok else 'MISSED'})"
        )
        value = f"{self.value:.3f}" if abs(self.value) < 100 else f"{self.value:,.0f}"
        note = f"  [{self.note}]" if self.note else ""
        return f"{self.name:<62} {value:>10} {self.unit}{verdict}{note}"


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so a timer stops when the work is done."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 2,
    device: torch.device | str = "cpu",
    inner: int = 1,
) -> dict[str, float]:
    """Median seconds of each callable, the callables timed in turn within every repetition.

    ``inner`` calls are timed together per repetition (for sub-millisecond work).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(values) for name, values in times.items()}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--quick``, ``--threads`` and ``--json``, which every script takes."""
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and smaller runs")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")


def apply_threads(threads: int) -> None:
    if threads:
        torch.set_num_threads(threads)


def report(figures: list[Figure], json_path: Path | None, title: str) -> int:
    """Print the figures (and write them as JSON); exit status 1 if a goal is missed."""
    print(f"# {title} (torch {torch.__version__}, {torch.get_num_threads()} CPU threads)")  # noqa: T201
    for figure in figures:
        print(figure.line(), flush=True)  # noqa: T201 - a benchmark script prints
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps([asdict(f) for f in figures], indent=1))
    return 1 if any(f.ok is False for f in figures) else 0


def load_figures(path: Path) -> list[Figure]:
    """The figures a script wrote with ``--json``."""
    return [Figure(**item) for item in json.loads(path.read_text())]


def describe(value: Any) -> str:
    """A short description of a device for file names and notes."""
    device = torch.device(value)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return device.type
