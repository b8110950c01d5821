"""Where nnsight's fixed cost per trace goes: a profile of empty traces of an encoded prompt.

The embedded ``uniterp-tiny`` model, one short prompt, nnsight's own ``trace`` (no
uniterp code in the way). Prints nnsight's own (self) time per trace by function,
grouped into the handoffs made at every module call and the per-trace setup. The
profiler slows small functions down more than big ones, so read the shares, not
the absolute numbers; ``bench_trace.py`` measures the wall-clock totals.

    python benchmarks/profile_trace.py
"""

from __future__ import annotations

import collections
import cProfile
import pstats

import torch

#: nnsight functions that run at every module call of a trace (the handoffs).
PER_MODULE = ("source.py:__call__", "source.py:run_body", "source.py:active", "interleaver.py:handle")


def main() -> None:
    from nnsight.modeling.transformers import TransformersModel

    from uniterp import StandardizedTransformer
    from uniterp.tiny import resolve_model_name

    torch.set_num_threads(1)
    model = StandardizedTransformer(resolve_model_name("uniterp-tiny"), dtype=torch.float32)
    model.dispatch()
    encoding = dict(model.tokenizer(["The capital of France is"], return_tensors="pt"))

    def empty() -> None:
        with torch.no_grad(), TransformersModel.trace(model, encoding):
            model.dispatch  # noqa: B018 - a statement, so nnsight runs the block as a trace

    for _ in range(20):
        empty()
    n = 500
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(n):
        empty()
    profile.disable()
    own: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    for (file, _line, fn), (_cc, count, self_time, _cum, _callers) in pstats.Stats(profile).stats.items():
        if "nnsight" in file:
            key = file.split("nnsight/")[-1].split("/")[-1] + ":" + fn
            own[key] += self_time
            calls[key] += count
    total = sum(own.values())
    handoffs = sum(v for k, v in own.items() if k in PER_MODULE)
    print(f"nnsight's own time per empty trace (profiled): {total / n * 1e6:.0f} us")  # noqa: T201
    print(  # noqa: T201
        f"  handoffs at every module call: {handoffs / total:.0%}; per-trace setup: {1 - handoffs / total:.0%}"
    )
    for key, value in own.most_common(15):
        print(f"{value / n * 1e6:8.1f} us  {calls[key] / n:6.1f} calls/trace  {key}")  # noqa: T201


if __name__ == "__main__":
    main()
