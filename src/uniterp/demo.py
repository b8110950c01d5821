"""``uniterp demo`` (or ``python -m uniterp.demo``): a one-minute offline tour.

Example::

    $ uniterp demo                                  # summary on stdout, demo-output/report.html
    $ python -m uniterp.demo --html /tmp/report.html

Runs on the embedded trained model (``uniterp-tiny``, no network): the logit
lens on a few fact prompts (" Paris" emerges through the layers), an identity
patchscope readout, a steering vector that moves a fact from Japan to France,
and ``model.check()``. Writes an HTML report with plotly figures when plotly is
installed (the ``display`` extra).
"""

from __future__ import annotations

import argparse
import html
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main", "run_demo", "write_report"]

LENS_PROMPTS = (
    "The capital of France is",
    "The official language of Japan is",
    "The Eiffel Tower is in the city of",
)
PATCHSCOPE_SOURCES = (
    "The capital of France",
    "The currency of Japan",
    "The capital of France is",
)
STEER_TOWARDS = ("The capital of France", "The currency of France", "In France", "The capital city of France")
STEER_AWAY = ("The capital of Japan", "The currency of Japan", "In Japan", "The capital city of Japan")
STEER_PROMPT = "The capital of Japan is"


def write_report(path: str | os.PathLike[str], title: str, sections: Sequence[tuple[str, Any]]) -> None:
    """Write a self-contained HTML page: a heading and a plotly figure (or text) per section.

    Example::

        >>> write_report("out.html", "Lens", [("France", fig), ("Notes", "plain text")])

    plotly.js is embedded once, so the page works offline.

    Args:
        path: The HTML file to write (its folder is created).
        title: Page title.
        sections: ``(heading, figure_or_text)`` pairs; text is shown preformatted.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "pre{background:#f5f5f5;padding:1em;overflow-x:auto}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    first_figure = True
    for heading, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if hasattr(content, "to_html"):
            parts.append(content.to_html(full_html=False, include_plotlyjs=first_figure))
            first_figure = False
        else:
            parts.append(f"<pre>{html.escape(str(content))}</pre>")
    parts.append("</body></html>")
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(parts))


def _tok(tokenizer: Any, token_id: int) -> str:
    return repr(tokenizer.decode([int(token_id)]))


def _top_line(tokenizer: Any, probs: Any, k: int = 3) -> str:
    values, ids = probs.topk(k)
    return "  ".join(f"{_tok(tokenizer, i):<14}{float(v):.2f}" for v, i in zip(values, ids))


def run_demo(
    html: str | None = os.path.join("demo-output", "report.html"), echo: Callable[[str], Any] = print
) -> int:
    """Run the tour on ``uniterp-tiny``; returns 0 when everything behaved, else 1.

    Example::

        >>> run_demo(html="demo-output/report.html")       # doctest: +SKIP
        0

    Args:
        html: Where to write the HTML report; ``None`` for none.
        echo: Where the summary lines go (default: ``print``).

    Returns:
        The exit status: 1 when ``model.check()`` fails.
    """
    import torch
    from transformers.utils import logging as hf_logging

    from ._model import StandardizedTransformer
    from .lens import logit_lens, tokenize
    from .patchscope import patchscope_lens, repeat_prompt
    from .tiny import TINY_MODEL_NAME, resolve_model_name

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    model = StandardizedTransformer(resolve_model_name(TINY_MODEL_NAME))
    tok = model.tokenizer
    echo(
        f"uniterp demo: {TINY_MODEL_NAME}, a {model.num_layers}-layer {model.model_type} model "
        f"(hidden {model.hidden_size}, {model.num_heads} heads, {model.num_kv_heads} key/value heads), "
        f"loaded offline and validated on every layer in {time.perf_counter() - start:.1f}s"
    )
    echo(repr(model))

    # 1. logit lens
    echo("\n== Logit lens: each layer's residual stream read through the unembedding ==")
    probs = logit_lens(model, list(LENS_PROMPTS))  # (n_prompts, n_layers, vocab)
    for p, prompt in enumerate(LENS_PROMPTS):
        echo(f"\n{prompt!r}")
        for layer in range(model.num_layers):
            echo(f"  layer {layer}:  {_top_line(tok, probs[p, layer])}")
    paris = tok(" Paris")["input_ids"][0]
    trail = "  ".join(f"L{i}: {float(v):.2f}" for i, v in enumerate(probs[0, :, paris]))
    echo(f"\nP(' Paris' | {LENS_PROMPTS[0]!r}) by layer: {trail}")

    # 2. patchscope
    target = repeat_prompt()
    echo(
        f"\n== Patchscope: each layer's state at a prompt's last token, patched into {target.prompt!r} "
        "and read back =="
    )
    scope = patchscope_lens(model, list(PATCHSCOPE_SOURCES), target)  # (n_sources, n_layers, vocab)
    for s, source in enumerate(PATCHSCOPE_SOURCES):
        cells = "  ".join(
            f"L{layer}: {_tok(tok, int(scope[s, layer].argmax()))}" for layer in range(model.num_layers)
        )
        echo(f"  {source!r:<28} {cells}")
    echo("  (early layers still hold the prompt's last word; later ones what comes next)")

    # 3. steering
    early, late = max(0, model.num_layers // 2 - 1), model.num_layers - 2
    echo(f"\n== Steering: add mean(France states) - mean(Japan states) at ' Japan' in {STEER_PROMPT!r} ==")
    subject = len(tokenize(model, [STEER_PROMPT])[0]) - 2  # the " Japan" token
    with torch.no_grad(), model.trace(STEER_PROMPT):
        before = model.next_token_probs.save()
    after = _steered(model, early, subject)
    too_late = _steered(model, late, subject)
    echo(f"  {'unsteered':<22}{_top_line(tok, before[0])}")
    echo(f"  {f'steered at layer {early}':<22}{_top_line(tok, after[0])}")
    echo(f"  {f'steered at layer {late}':<22}{_top_line(tok, too_late[0])}")
    if int(after[0].argmax()) != int(before[0].argmax()) == int(too_late[0].argmax()):
        echo(
            f"  The answer is read from the subject's position up to about layer {early}; "
            f"by layer {late} it has moved to the last token, so steering ' Japan' there changes nothing."
        )

    # 4. checks
    result = model.check()
    counts = {
        status: sum(item.status == status for item in result.items)
        for status in ("passed", "failed", "skipped")
    }
    echo(
        f"\n== model.check(): {'PASSED' if result.passed else 'FAILED'} "
        f"({counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped) =="
    )
    if not result.passed:
        echo(str(result))

    if html is not None:
        figures = _figures(model, probs, scope, before[0], after[0])
        if figures:
            write_report(html, "uniterp demo on uniterp-tiny", figures)
            echo(f"\nHTML report: {html}")
        else:
            echo("\n(no HTML report: install plotly with `pip install 'uniterp[display]'`)")
    echo(f"\nDone in {time.perf_counter() - start:.1f}s.")
    return 0 if result.passed else 1


def _steered(model: Any, layer: int, position: int) -> Any:
    """Next-token probabilities of `STEER_PROMPT`, steered France-wards at one layer and token."""
    import torch

    from .steering import steering_vector

    vector = steering_vector(model, list(STEER_TOWARDS), list(STEER_AWAY), layer=layer)
    with torch.no_grad(), model.trace(STEER_PROMPT):
        model.steer(layer, vector, factor=1.0, token_positions=position)
        probs = model.next_token_probs.save()
    return probs


def _figures(model: Any, lens: Any, scope: Any, before: Any, after: Any) -> list[tuple[str, Any]]:
    try:
        import plotly.graph_objects as go

        from .display import plot_logit_lens, plot_topk_tokens
    except ImportError:
        return []
    from .lens import logit_lens, tokenize

    tok = model.tokenizer
    prompt = LENS_PROMPTS[0]
    ids = tokenize(model, [prompt])[0]
    grid = logit_lens(model, prompt, positions=list(range(len(ids))))[0]
    sections: list[tuple[str, Any]] = [
        ("Logit lens: top tokens per layer", plot_topk_tokens(lens, tok, k=5, prompts=list(LENS_PROMPTS))),
        (f"Logit lens at every position of {prompt!r}", plot_logit_lens(grid, tok, tokens=ids)),
        (
            "Patchscope: last-token states decoded through the identity prompt",
            plot_topk_tokens(scope, tok, k=3, prompts=list(PATCHSCOPE_SOURCES)),
        ),
    ]
    top = (before + after).topk(6).indices.tolist()
    labels = [tok.decode([i]) for i in top]
    fig = go.Figure(
        [
            go.Bar(name="before", x=labels, y=[float(before[i]) for i in top]),
            go.Bar(name="after steering", x=labels, y=[float(after[i]) for i in top]),
        ]
    )
    fig.update_layout(barmode="group", title=f"Next-token probabilities of {STEER_PROMPT!r}", yaxis_title="p")
    sections.append(("Steering: before and after", fig))
    return sections


def main(argv: list[str] | None = None) -> int:
    """``python -m uniterp.demo [--html FILE | --no-html]``; returns the exit status.

    Example::

        >>> main(["--no-html"])  # doctest: +SKIP
        0
    """
    parser = argparse.ArgumentParser(prog="python -m uniterp.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--html", default=os.path.join("demo-output", "report.html"), help="report file")
    parser.add_argument("--no-html", action="store_true", help="print the summary only")
    args = parser.parse_args(argv)
    return run_demo(html=None if args.no_html else args.html)


if __name__ == "__main__":
    raise SystemExit(main())
