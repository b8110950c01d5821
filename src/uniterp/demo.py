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
from typing import Any, NamedTuple

__all__ = ["main", "run_demo", "steering_figure", "write_report"]

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


#: A report section: ``(heading, content)`` or ``(heading, content, explanation)``. The
#: content is a plotly figure, text (shown preformatted, as the terminal shows it), or a
#: list of those; the explanation is a paragraph shown under the heading.
Section = tuple[str, Any] | tuple[str, Any, str]


def write_report(
    path: str | os.PathLike[str], title: str, sections: Sequence[Section], intro: str | None = None
) -> None:
    """Write a self-contained HTML page: a heading, an explanation and figures or text per section.

    Example::

        >>> write_report("out.html", "Lens", [("France", fig, "What the figure shows."),
        ...                                   ("Notes", "plain text")])

    plotly.js is embedded once, so the page works offline.

    Args:
        path: The HTML file to write (its folder is created).
        title: Page title.
        sections: ``(heading, content)`` or ``(heading, content, explanation)``;
            content is a plotly figure, text (shown preformatted) or a list of
            those.
        intro: A paragraph under the page title.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
        "line-height:1.45}h2{margin-top:2.2em}p.note{max-width:60em}"
        "pre{background:#f5f5f5;padding:1em;white-space:pre-wrap;overflow-wrap:anywhere;font-size:13px}"
        ".figure{margin:1em 0 2em 0}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if intro:
        parts.append(f'<p class="note">{html.escape(intro)}</p>')
    first_figure = True
    for section in sections:
        heading, content = section[0], section[1]
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if len(section) > 2 and section[2]:
            parts.append(f'<p class="note">{html.escape(str(section[2]))}</p>')
        for item in content if isinstance(content, (list, tuple)) else [content]:
            if hasattr(item, "to_html"):
                parts.append('<div class="figure">')
                parts.append(item.to_html(full_html=False, include_plotlyjs=first_figure))
                parts.append("</div>")
                first_figure = False
            else:
                parts.append(f"<pre>{html.escape(str(item))}</pre>")
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


class _Transcript:
    """Echoes the summary lines and keeps them per section for the HTML report."""

    def __init__(self, echo: Callable[[str], Any]) -> None:
        self._echo = echo
        self.sections: dict[str, list[str]] = {}
        self._current = "intro"

    def section(self, name: str, heading: str) -> None:
        self._current = name
        self(heading)

    def __call__(self, line: str) -> None:
        self._echo(line)
        self.sections.setdefault(self._current, []).append(line)

    def text(self, name: str) -> str:
        return "\n".join(self.sections.get(name, [])).strip("\n")


TREE_NOTE = (
    "The standardized tree: where each standard name (embed_tokens, layers[i].self_attn, "
    "layers[i].mlp, ln_final, lm_head) lives in the native model, and the values readable and "
    "writable inside a trace."
)
LENS_NOTE = (
    "The logit lens reads each layer's residual stream at the prompt's last token through the "
    "model's final norm and unembedding, as if the model stopped there. Each column is a layer, "
    "each row a rank; the colour is the probability. In the first layers the guesses are generic "
    "words; the answer (' Paris' for France) takes over in the later layers, and the last layer "
    "is exactly the model's own next-token distribution."
)
GRID_NOTE = (
    "The same lens at every position of the prompt: each cell is the top next-token guess of "
    "one layer (row) after one input token (column). Hover over a cell for the top three tokens."
)
SCOPE_NOTE = (
    "A patchscope decodes a hidden state by patching it into another prompt. Here each layer's "
    "state at the source prompt's last token replaces the '?' of the identity prompt "
    "'king king / 1135 1135 / hello hello / ?', which asks the model to repeat the token it sees. "
    "Early layers still hold the prompt's last word; later ones hold what comes next."
)
STEER_NOTE = (
    "A steering vector is the mean difference of the residual streams of France prompts and "
    "Japan prompts at one layer. Adding it at the subject token ' Japan' of "
    f"{STEER_PROMPT!r} moves the answer from Tokyo to Paris when it is added early; by the late "
    "layer the answer has already moved to the last token, so steering ' Japan' there changes "
    "nothing."
)
CHECK_NOTE = (
    "model.check() compares every standardized value with the native module's, the logits with a "
    "plain HF forward, the lens of the last layer with the logits, and checks that writes reach "
    "the output."
)


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
    from transformers.utils import logging as hf_logging

    from ._model import StandardizedTransformer
    from .tiny import TINY_MODEL_NAME, resolve_model_name

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    out = _Transcript(echo)
    start = time.perf_counter()
    model = StandardizedTransformer(resolve_model_name(TINY_MODEL_NAME))
    out(
        f"uniterp demo: {TINY_MODEL_NAME}, a {model.num_layers}-layer {model.model_type} model "
        f"(hidden {model.hidden_size}, {model.num_heads} heads, {model.num_kv_heads} key/value heads), "
        f"loaded offline and validated on every layer in {time.perf_counter() - start:.1f}s"
    )
    out(repr(model))
    probs = _lens_section(model, out)
    scope = _patchscope_section(model, out)
    steering = _steering_section(model, out)
    result = _check_section(model, out, echo)
    if html is not None:
        _report(model, out, echo, html, probs, scope, steering)
    echo(f"\nDone in {time.perf_counter() - start:.1f}s.")
    return 0 if result.passed else 1


def _lens_section(model: Any, out: _Transcript) -> Any:
    """The logit lens of the lens prompts: ``(n_prompts, n_layers, vocab)``, printed layer by layer."""
    from .lens import logit_lens

    tok = model.tokenizer
    out.section("lens", "\n== Logit lens: each layer's residual stream read through the unembedding ==")
    probs = logit_lens(model, list(LENS_PROMPTS))
    for p, prompt in enumerate(LENS_PROMPTS):
        out(f"\n{prompt!r}")
        for layer in range(model.num_layers):
            out(f"  layer {layer}:  {_top_line(tok, probs[p, layer])}")
    paris = tok(" Paris")["input_ids"][0]
    trail = "  ".join(f"L{i}: {float(v):.2f}" for i, v in enumerate(probs[0, :, paris]))
    out(f"\nP(' Paris' | {LENS_PROMPTS[0]!r}) by layer: {trail}")
    return probs


def _patchscope_section(model: Any, out: _Transcript) -> Any:
    """Patchscopes of the sources through the identity prompt: ``(n_sources, n_layers, vocab)``."""
    from .patchscope import patchscope_lens, repeat_prompt

    target = repeat_prompt()
    out.section(
        "scope",
        f"\n== Patchscope: each layer's state at a prompt's last token, patched into {target.prompt!r} "
        "and read back ==",
    )
    scope = patchscope_lens(model, list(PATCHSCOPE_SOURCES), target)
    for s, source in enumerate(PATCHSCOPE_SOURCES):
        cells = "  ".join(
            f"L{layer}: {_tok(model.tokenizer, int(scope[s, layer].argmax()))}"
            for layer in range(model.num_layers)
        )
        out(f"  {source!r:<28} {cells}")
    out("  (early layers still hold the prompt's last word; later ones what comes next)")
    return scope


def _steering_section(model: Any, out: _Transcript) -> _Steering:
    """Steering at the subject's token, early and late; the distributions for the report."""
    import torch

    from ._tooling import tokenize

    tok = model.tokenizer
    early, late = max(0, model.num_layers // 2 - 1), model.num_layers - 2
    out.section(
        "steer",
        f"\n== Steering: add mean(France states) - mean(Japan states) at ' Japan' in {STEER_PROMPT!r} ==",
    )
    ids = tokenize(model, [STEER_PROMPT])[0]
    subject = len(ids) - 2  # the " Japan" token
    with torch.no_grad(), model.trace(STEER_PROMPT):
        before = model.next_token_probs.save()
    after = _steered(model, early, subject)
    too_late = _steered(model, late, subject)
    out(f"  {'unsteered':<22}{_top_line(tok, before[0])}")
    out(f"  {f'steered at layer {early}':<22}{_top_line(tok, after[0])}")
    out(f"  {f'steered at layer {late}':<22}{_top_line(tok, too_late[0])}")
    if int(after[0].argmax()) != int(before[0].argmax()) == int(too_late[0].argmax()):
        out(
            f"  The answer is read from the subject's position up to about layer {early}; "
            f"by layer {late} it has moved to the last token, so steering ' Japan' there changes nothing."
        )
    return _Steering(early, late, subject, tok.decode([ids[subject]]), before[0], after[0], too_late[0])


def _check_section(model: Any, out: _Transcript, echo: Callable[[str], Any]) -> Any:
    """``model.check()``: a summary on screen, the full list in the report."""
    result = model.check()
    counts = {s: sum(item.status == s for item in result.items) for s in ("passed", "failed", "skipped")}
    out.section(
        "check",
        f"\n== model.check(): {'PASSED' if result.passed else 'FAILED'} "
        f"({counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped) ==",
    )
    out.sections["check"].append(str(result))
    if not result.passed:
        echo(str(result))
    return result


def _report(
    model: Any,
    out: _Transcript,
    echo: Callable[[str], Any],
    html: str,
    probs: Any,
    scope: Any,
    steering: _Steering,
) -> None:
    figures = _figures(model, probs, scope, steering)
    if not figures:
        echo("\n(no HTML report: install plotly with `pip install 'uniterp[display]'`)")
        return
    intro, tree = out.sections["intro"][0], "\n".join(out.sections["intro"][1:])
    sections = [("The model", tree, TREE_NOTE), *_sections(out, figures)]
    write_report(html, "uniterp demo on uniterp-tiny", sections, intro=intro)
    echo(f"\nHTML report: {html}")


def _steered(model: Any, layer: int, position: int) -> Any:
    """Next-token probabilities of `STEER_PROMPT`, steered France-wards at one layer and token."""
    import torch

    from .steering import steering_vector

    vector = steering_vector(model, list(STEER_TOWARDS), list(STEER_AWAY), layer=layer)
    with torch.no_grad(), model.trace(STEER_PROMPT):
        model.steer(layer, vector, factor=1.0, token_positions=position)
        probs = model.next_token_probs.save()
    return probs


class _Steering(NamedTuple):
    early: int
    late: int
    position: int
    token: str
    before: Any
    after: Any
    too_late: Any


def _sections(out: _Transcript, figures: dict[str, Any]) -> list[Section]:
    """The report: each figure with its explanation and the lines the terminal printed."""
    return [
        ("Logit lens: top tokens per layer", [figures["lens"], out.text("lens")], LENS_NOTE),
        (f"Logit lens at every position of {LENS_PROMPTS[0]!r}", figures["grid"], GRID_NOTE),
        (
            "Patchscope: last-token states decoded through the identity prompt",
            [figures["scope"], out.text("scope")],
            SCOPE_NOTE,
        ),
        ("Steering: before and after", [figures["steer"], out.text("steer")], STEER_NOTE),
        ("model.check()", out.text("check"), CHECK_NOTE),
    ]


def steering_figure(tokenizer: Any, steering: Any) -> Any:
    """Bar chart of the steered and unsteered next-token probabilities, saying where it steered."""
    import plotly.graph_objects as go

    before, after, too_late = steering.before, steering.after, steering.too_late
    top = (before + after + too_late).topk(6).indices.tolist()
    labels = [repr(tokenizer.decode([i])) for i in top]
    where = f"token {steering.token!r} (position {steering.position})"
    fig = go.Figure(
        [
            go.Bar(name="unsteered", x=labels, y=[float(before[i]) for i in top]),
            go.Bar(
                name=f"steered at layer {steering.early}, {where}", x=labels, y=[float(after[i]) for i in top]
            ),
            go.Bar(
                name=f"steered at layer {steering.late}, {where}",
                x=labels,
                y=[float(too_late[i]) for i in top],
            ),
        ]
    )
    fig.update_layout(
        barmode="group",
        title={
            "text": f"Next-token probabilities of {STEER_PROMPT!r}<br><sup>France - Japan steering vector "
            f"added at {where}, layer {steering.early} or {steering.late}</sup>",
            "y": 1.0,
            "yref": "container",
            "yanchor": "top",
            "pad": {"t": 12},
        },
        xaxis_title="next token",
        yaxis_title="probability",
        height=470,
        margin={"t": 90, "b": 60, "l": 70, "r": 30},
        legend={"orientation": "h", "x": 0.0, "y": -0.2, "yanchor": "top"},
    )
    return fig


def _figures(model: Any, lens: Any, scope: Any, steering: _Steering) -> dict[str, Any]:
    try:
        from .display import plot_logit_lens, plot_topk_tokens
    except ImportError:
        return {}
    try:
        import plotly  # noqa: F401
    except ImportError:
        return {}
    from ._tooling import tokenize
    from .lens import logit_lens

    tok = model.tokenizer
    prompt = LENS_PROMPTS[0]
    ids = tokenize(model, [prompt])[0]
    grid = logit_lens(model, prompt, positions=list(range(len(ids))))  # (1, n_layers, n_positions, vocab)
    return {
        "lens": plot_topk_tokens(lens, tok, k=5, prompts=list(LENS_PROMPTS)),
        "grid": plot_logit_lens(grid, tok, tokens=ids),
        "scope": plot_topk_tokens(scope, tok, k=3, prompts=list(PATCHSCOPE_SOURCES)),
        "steer": steering_figure(tok, steering),
    }


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
