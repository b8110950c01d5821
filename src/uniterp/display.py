"""Plotly figures and DataFrames for lens results and prompts (the ``display`` extra).

Example::

    >>> from uniterp.display import plot_topk_tokens, plot_logit_lens
    >>> probs = logit_lens(model, "The capital of France is")      # (1, n_layers, vocab)
    >>> fig = plot_topk_tokens(probs, model.tokenizer, k=5, title="logit lens")
    >>> fig.show()                                                  # your call, not ours
    >>> plot_topk_tokens(probs, model.tokenizer, save_html="lens.html")

plotly and pandas are imported inside the functions, so ``import uniterp``
never needs them. Install them with ``pip install 'uniterp[display]'``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ._errors import InputError, ShapeError

if TYPE_CHECKING:
    import pandas
    from plotly.graph_objects import Figure

    from .prompts import Prompt

__all__ = ["plot_logit_lens", "plot_topk_tokens", "prompts_to_df"]


# Layout in pixels. Stacked panels get their gaps in pixels, computed from what sits in
# them (the x tick labels and axis title of the panel above, the title of the panel
# below), so nothing overlaps whatever the number of panels; heights follow the content.
_CELL_PX = 30  # one heatmap row (a rank or a layer), room for the token text
_MIN_PANEL_PX = 90  # a panel is never flatter than this
_TICKS_PX = 22  # x tick labels under a panel (one line of 12 px text and its padding)
_AXIS_TITLE_PX = 26  # the x axis title under the tick labels
_PANEL_TITLE_PX = 28  # a subplot title above a panel (16 px text and its padding)
_TITLE_PX = 40  # the figure title, at the very top
_GAP_PAD_PX = 14  # air between one panel's labels and the next panel's title


@dataclass(frozen=True)
class _StackHeights:
    """Pixel layout of panels stacked vertically; see `_stack_heights`."""

    fractions: list[float]  # each panel's share of the panels' total height (plotly row_heights)
    spacing: float  # the gap between panels as a fraction of the plot area (plotly vertical_spacing)
    total: int  # figure height in pixels
    top: int  # top margin without the figure title: the first panel's title
    bottom: int  # bottom margin: the last panel's tick labels and axis title


def _stack_heights(cells: Sequence[int], titled: bool = True, axis_title: bool = True) -> _StackHeights:
    """Heights for panels of ``cells[i]`` heatmap rows each, stacked with room for every label.

    The gap between two panels holds the upper panel's x tick labels and x axis
    title and the lower panel's subplot title, plus some air.
    """
    panels = [max(_MIN_PANEL_PX, _CELL_PX * n) for n in cells]
    under = _TICKS_PX + (_AXIS_TITLE_PX if axis_title else 0)
    above = _PANEL_TITLE_PX if titled else 0
    gap = under + above + _GAP_PAD_PX
    plot_area = sum(panels) + gap * (len(panels) - 1)
    top = above + 10
    bottom = under + 10
    return _StackHeights(
        fractions=[h / sum(panels) for h in panels],
        spacing=gap / plot_area if len(panels) > 1 else 0.0,
        total=plot_area + top + bottom,
        top=top,
        bottom=bottom,
    )


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("uniterp.display needs plotly: pip install 'uniterp[display]'") from error
    return go, make_subplots


def _token_text(tokenizer: Any, token_id: int) -> str:
    """A token as readable text: decoded, with newlines and tabs made visible."""
    text = tokenizer.decode([int(token_id)])
    return text.replace("\n", "\\n").replace("\t", "\\t")


def _title(text: str | None) -> dict[str, Any] | None:
    """A figure title pinned to the top of the figure, above the first panel's title."""
    if not text:
        return None
    return {"text": text, "y": 1.0, "yref": "container", "yanchor": "top", "pad": {"t": 12}}


def _finish(fig: Figure, save_html: str | os.PathLike[str] | None) -> Figure:
    if save_html is not None:
        fig.write_html(os.fspath(save_html), include_plotlyjs=True)
    return fig


def _labels(count: int, given: Sequence[Any] | None, what: str) -> list[str]:
    if given is None:
        return [str(i) for i in range(count)]
    labels = [str(x) for x in given]
    if len(labels) != count:
        raise InputError(f"{len(labels)} {what} labels for {count} {what}s")
    return labels


def plot_topk_tokens(
    probs: torch.Tensor,
    tokenizer: Any,
    k: int = 4,
    title: str | None = None,
    save_html: str | os.PathLike[str] | None = None,
    layers: Sequence[int] | None = None,
    prompts: Sequence[str] | None = None,
    colorscale: str = "Blues",
) -> Figure:
    """Heatmap of the top-``k`` tokens at each layer, coloured by probability.

    Example::

        >>> probs = logit_lens(model, ["The capital of France is"])  # (1, n_layers, vocab)
        >>> fig = plot_topk_tokens(probs, model.tokenizer, k=5, title="France")
        >>> fig.data[0].z.shape                                       # (k, n_layers)

    One panel per prompt: columns are layers, rows are ranks (1 = most likely);
    each cell shows the token and its probability on hover. A 1-D ``(vocab,)``
    distribution (one prompt's ``next_token_probs``) is one column labelled
    "next token", not a layer.

    Labels are never guessed: a layer dimension of size 1 needs ``layers=``
    (which layer is it?), because ``(1, vocab)`` is also what one prompt's
    next-token probabilities look like.

    Args:
        probs: ``(n_layers, vocab)`` or ``(n_prompts, n_layers, vocab)``
            probabilities (what `logit_lens` returns for one position), or a
            ``(vocab,)`` next-token distribution.
        tokenizer: Tokenizer to decode token ids.
        k: Tokens per layer.
        title: Figure title.
        save_html: Write the figure to this HTML file (self-contained).
        layers: Layer numbers of the ``n_layers`` columns (default
            ``0..n_layers-1``, required when ``n_layers`` is 1).
        prompts: Panel titles, one per prompt.
        colorscale: A plotly colour scale name.

    Returns:
        A ``plotly.graph_objects.Figure`` (not shown).

    Raises:
        ShapeError: ``probs`` does not have one of those shapes (e.g. a
            positions dimension: pick one position first), or a layer
            dimension of 1 without ``layers=``.
        InputError: ``k`` is not positive or labels do not match.
    """
    go, make_subplots = _plotly()
    data = torch.as_tensor(probs).detach().float().cpu()
    shape = tuple(data.shape)
    next_token = data.ndim == 1
    if next_token:
        if layers is not None:
            raise InputError(
                f"plot_topk_tokens: probs {shape} is one distribution with no layer dimension, but "
                f"layers={list(layers)} was given; pass (n_layers, vocab) probabilities to label layers"
            )
        data = data[None, None]
    elif data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        hint = (
            "; it has a positions dimension (logit_lens(..., positions=[...])): pick one position, "
            "e.g. probs[:, :, -1], or use plot_logit_lens for the whole grid"
            if data.ndim == 4
            else ""
        )
        raise ShapeError(
            f"plot_topk_tokens: probs has shape {shape}; expected (n_layers, vocab), "
            f"(n_prompts, n_layers, vocab) or (vocab,){hint}"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}")
    n_prompts, n_layers, vocab = data.shape
    if n_layers == 1 and layers is None and not next_token:
        raise ShapeError(
            f"plot_topk_tokens: probs has shape {shape}, a layer dimension of 1: pass layers=[i] to say "
            "which layer it is. For next-token probabilities (batch, vocab), pass each row as a 1-D "
            "(vocab,) tensor, or probs[:, None] with layers=[the layer]"
        )
    k = min(k, vocab)
    layer_labels = ["next token"] if next_token else _labels(n_layers, layers, "layer")
    titles = _labels(n_prompts, prompts, "prompt") if prompts is not None else None
    heights = _stack_heights([k] * n_prompts)
    fig = make_subplots(
        rows=n_prompts,
        cols=1,
        subplot_titles=titles,
        row_heights=heights.fractions,
        vertical_spacing=heights.spacing,
    )
    top = data.topk(k, dim=-1)  # values/indices: (n_prompts, n_layers, k)
    for p in range(n_prompts):
        values = top.values[p].T  # (k, n_layers)
        ids = top.indices[p].T
        text = [[_token_text(tokenizer, int(ids[r, c])) for c in range(n_layers)] for r in range(k)]
        fig.add_trace(
            go.Heatmap(
                z=values.numpy(),
                x=layer_labels,
                y=[f"top {r + 1}" for r in range(k)],
                text=text,
                texttemplate="%{text}",
                zmin=0.0,
                zmax=1.0,
                colorscale=colorscale,
                showscale=p == 0,
                hovertemplate="layer %{x}<br>%{y}: %{text}<br>p = %{z:.4f}<extra></extra>",
            ),
            row=p + 1,
            col=1,
        )
        fig.update_yaxes(autorange="reversed", row=p + 1, col=1)
        fig.update_xaxes(
            title_text="" if next_token else "layer", type="category", automargin=True, row=p + 1, col=1
        )
    title_px = _TITLE_PX if title else 0
    fig.update_layout(
        title=_title(title),
        height=heights.total + title_px,
        margin={"t": heights.top + title_px, "b": heights.bottom, "l": 70, "r": 30},
    )
    return _finish(fig, save_html)


def plot_logit_lens(
    probs: torch.Tensor,
    tokenizer: Any,
    tokens: Sequence[str] | Sequence[int] | torch.Tensor | None = None,
    title: str | None = None,
    save_html: str | os.PathLike[str] | None = None,
    layers: Sequence[int] | None = None,
    hover_k: int = 3,
    colorscale: str = "Blues",
    prompt_index: int | None = None,
) -> Figure:
    """Logit-lens grid: the most likely token at every layer and position.

    Example::

        >>> grid = logit_lens(model, prompt, positions=list(range(n)))  # (1, n_layers, n, vocab)
        >>> fig = plot_logit_lens(grid, model.tokenizer, tokens=model.tokenizer(prompt).input_ids)
        >>> fig = plot_logit_lens(grid[0], model.tokenizer)               # (n_layers, n, vocab)

    Rows are layers (first at the bottom), columns positions; each cell shows
    the top-1 token, coloured by its probability, and lists the top
    ``hover_k`` tokens with probabilities on hover.

    Shapes are never guessed: ``logit_lens(model, prompt)`` without
    ``positions=`` gives ``(1, n_layers, vocab)``, one position per layer;
    read as a grid it would be one layer by ``n_layers`` positions. A leading
    dimension of 1 is therefore refused unless ``layers=`` names that one layer.

    Args:
        probs: ``(n_layers, n_positions, vocab)`` probabilities, or
            ``(n_prompts, n_layers, n_positions, vocab)`` as
            ``logit_lens(..., positions=[...])`` returns them (then
            ``prompt_index`` picks the prompt; it may be left out for one prompt).
        tokenizer: Tokenizer to decode token ids.
        tokens: Input tokens (ids or strings) labelling the positions.
        title: Figure title.
        save_html: Write the figure to this HTML file (self-contained).
        layers: Layer numbers of the rows (default ``0..n_layers-1``; required
            when there is one row).
        hover_k: Tokens listed on hover.
        colorscale: A plotly colour scale name.
        prompt_index: Which prompt of a 4-D ``probs`` to draw.

    Returns:
        A ``plotly.graph_objects.Figure`` (not shown).

    Raises:
        ShapeError: ``probs`` is not 3-D or 4-D, has a leading dimension of 1
            without ``layers=`` of length 1, or is 4-D with several prompts and
            no ``prompt_index``. The message says what to pass instead.
        InputError: Label counts do not match, or ``prompt_index`` is out of range.
    """
    go, _ = _plotly()
    data = torch.as_tensor(probs).detach().float().cpu()
    shape = tuple(data.shape)
    if data.ndim == 4:
        n_prompts = data.shape[0]
        if prompt_index is None:
            if n_prompts != 1:
                raise ShapeError(
                    f"plot_logit_lens: probs {shape} holds {n_prompts} prompts "
                    "(n_prompts, n_layers, n_positions, vocab); pass prompt_index= to pick one"
                )
            prompt_index = 0
        if isinstance(prompt_index, bool) or not isinstance(prompt_index, int):
            raise InputError(f"prompt_index must be an int, got {prompt_index!r}")
        if not -n_prompts <= prompt_index < n_prompts:
            raise InputError(f"prompt_index={prompt_index} is out of range for {n_prompts} prompts")
        data = data[prompt_index]
    elif prompt_index is not None:
        raise InputError(
            f"plot_logit_lens: prompt_index is for 4-D (n_prompts, n_layers, n_positions, vocab) "
            f"probabilities; probs has shape {shape}"
        )
    elif data.ndim == 3 and data.shape[0] == 1 and (layers is None or len(list(layers)) != 1):
        raise ShapeError(
            f"plot_logit_lens: probs has shape {shape}, which is ambiguous: logit_lens(model, prompt) "
            "returns (n_prompts=1, n_layers, vocab), the last position only, while this function "
            "wants (n_layers, n_positions, vocab). For a grid, pass "
            "logit_lens(model, prompt, positions=list(range(n_tokens))) (4-D, any number of prompts "
            "with prompt_index=); for the last position only, use plot_topk_tokens(probs, tokenizer); "
            "if it really is one layer, pass layers=[that layer]"
        )
    if data.ndim != 3:
        raise ShapeError(
            f"plot_logit_lens: probs has shape {shape}; expected (n_layers, n_positions, vocab) or "
            "(n_prompts, n_layers, n_positions, vocab), as logit_lens(model, prompts, "
            "positions=[...]) returns"
        )
    n_layers, n_positions, vocab = data.shape
    if n_layers == 1 and layers is None:
        raise ShapeError(
            f"plot_logit_lens: probs {shape} has one layer; pass layers=[that layer] to label it"
        )
    layer_labels = _labels(n_layers, layers, "layer")
    if tokens is None:
        position_labels = [str(i) for i in range(n_positions)]
    else:
        items = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
        if len(items) != n_positions:
            raise InputError(f"{len(items)} tokens for {n_positions} positions")
        position_labels = [
            f"{i}: {_token_text(tokenizer, t) if isinstance(t, int) else str(t)}" for i, t in enumerate(items)
        ]
    top = data.topk(max(1, min(hover_k, vocab)), dim=-1)  # (n_layers, n_positions, hover_k)
    text: list[list[str]] = []
    hover: list[list[str]] = []
    for layer in range(n_layers):
        row_text: list[str] = []
        row_hover: list[str] = []
        for pos in range(n_positions):
            ids = top.indices[layer, pos].tolist()
            vals = top.values[layer, pos].tolist()
            row_text.append(_token_text(tokenizer, ids[0]))
            row_hover.append(
                "<br>".join(f"{_token_text(tokenizer, i)!r}: {v:.4f}" for i, v in zip(ids, vals))
            )
        text.append(row_text)
        hover.append(row_hover)
    fig = go.Figure(
        go.Heatmap(
            z=top.values[..., 0].numpy(),
            x=position_labels,
            y=layer_labels,
            text=text,
            customdata=hover,
            texttemplate="%{text}",
            zmin=0.0,
            zmax=1.0,
            colorscale=colorscale,
            hovertemplate="layer %{y}, position %{x}<br>%{customdata}<extra></extra>",
        )
    )
    longest = max(len(label) for label in position_labels)
    # long position labels are drawn slanted: leave them room below the grid
    tick_room = _TICKS_PX + (int(5.5 * min(longest, 24)) if n_positions * (longest + 2) > 110 else 0)
    fig.update_xaxes(title_text="position", type="category", automargin=True)
    fig.update_yaxes(title_text="layer", type="category", automargin=True)
    bottom = tick_room + _AXIS_TITLE_PX + 10
    top_margin = 20 + (_TITLE_PX if title else 0)
    fig.update_layout(
        title=_title(title),
        height=max(_MIN_PANEL_PX, _CELL_PX * n_layers) + top_margin + bottom,
        margin={"t": top_margin, "b": bottom, "l": 70, "r": 30},
    )
    return _finish(fig, save_html)


def prompts_to_df(prompts: Sequence[Prompt], tokenizer: Any) -> pandas.DataFrame:
    """The prompts and their targets as a pandas DataFrame, one row per (prompt, category).

    Example::

        >>> df = prompts_to_df([Prompt.from_strings("1 2 3", {"next": "4"}, tok)], tok)
        >>> df[["prompt", "category", "target_strings"]].values.tolist()
        [['1 2 3', 'next', ['4']]]

    Args:
        prompts: `Prompt` objects.
        tokenizer: Tokenizer to decode the target tokens.

    Returns:
        Columns ``prompt_index``, ``prompt``, ``category``, ``target_strings``,
        ``target_tokens`` and ``target_token_strings`` (each token decoded).
    """
    try:
        import pandas as pd
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("prompts_to_df needs pandas: pip install 'uniterp[display]'") from error
    rows: list[dict[str, Any]] = []
    for index, prompt in enumerate(prompts):
        for category, ids in prompt.target_tokens.items():
            rows.append(
                {
                    "prompt_index": index,
                    "prompt": prompt.prompt,
                    "category": category,
                    "target_strings": list(prompt.target_strings.get(category, [])),
                    "target_tokens": [int(i) for i in ids],
                    "target_token_strings": [tokenizer.decode([int(i)]) for i in ids],
                }
            )
    columns = [
        "prompt_index",
        "prompt",
        "category",
        "target_strings",
        "target_tokens",
        "target_token_strings",
    ]
    return pd.DataFrame(rows, columns=columns)
