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
from typing import TYPE_CHECKING, Any

import torch

from ._errors import InputError, ShapeError

if TYPE_CHECKING:
    import pandas
    from plotly.graph_objects import Figure

    from .prompts import Prompt

__all__ = ["plot_logit_lens", "plot_topk_tokens", "prompts_to_df"]


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
    each cell shows the token and its probability on hover.

    Args:
        probs: ``(n_layers, vocab)`` or ``(n_prompts, n_layers, vocab)`` probabilities.
        tokenizer: Tokenizer to decode token ids.
        k: Tokens per layer.
        title: Figure title.
        save_html: Write the figure to this HTML file (self-contained).
        layers: Layer numbers of the ``n_layers`` rows (default ``0..n_layers-1``).
        prompts: Panel titles, one per prompt.
        colorscale: A plotly colour scale name.

    Returns:
        A ``plotly.graph_objects.Figure`` (not shown).

    Raises:
        ShapeError: ``probs`` is not 2-D or 3-D.
        InputError: ``k`` is not positive or labels do not match.
    """
    go, make_subplots = _plotly()
    data = torch.as_tensor(probs).detach().float().cpu()
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ShapeError(
            f"plot_topk_tokens: probs has shape {tuple(data.shape)}; expected (n_layers, vocab) "
            "or (n_prompts, n_layers, vocab)"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive int, got {k!r}")
    n_prompts, n_layers, vocab = data.shape
    k = min(k, vocab)
    layer_labels = _labels(n_layers, layers, "layer")
    titles = _labels(n_prompts, prompts, "prompt") if prompts is not None else None
    fig = make_subplots(
        rows=n_prompts, cols=1, subplot_titles=titles, vertical_spacing=0.08 / max(n_prompts, 1)
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
        fig.update_xaxes(title_text="layer", type="category", row=p + 1, col=1)
    fig.update_layout(title=title, height=max(250, 60 + 40 * k) * n_prompts)
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
) -> Figure:
    """Logit-lens grid: the most likely token at every layer and position.

    Example::

        >>> probs = logit_lens(model, prompt, positions=list(range(n)))[0]  # (n_layers, n, vocab)
        >>> fig = plot_logit_lens(probs, model.tokenizer, tokens=model.tokenizer(prompt).input_ids)

    Rows are layers (first at the bottom), columns positions; each cell shows
    the top-1 token, coloured by its probability, and lists the top
    ``hover_k`` tokens with probabilities on hover.

    Args:
        probs: ``(n_layers, n_positions, vocab)`` probabilities.
        tokenizer: Tokenizer to decode token ids.
        tokens: Input tokens (ids or strings) labelling the positions.
        title: Figure title.
        save_html: Write the figure to this HTML file (self-contained).
        layers: Layer numbers of the rows (default ``0..n_layers-1``).
        hover_k: Tokens listed on hover.
        colorscale: A plotly colour scale name.

    Returns:
        A ``plotly.graph_objects.Figure`` (not shown).

    Raises:
        ShapeError: ``probs`` is not 3-D.
        InputError: Label counts do not match.
    """
    go, _ = _plotly()
    data = torch.as_tensor(probs).detach().float().cpu()
    if data.ndim != 3:
        raise ShapeError(
            f"plot_logit_lens: probs has shape {tuple(data.shape)}; expected (n_layers, n_positions, vocab)"
        )
    n_layers, n_positions, vocab = data.shape
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
    fig.update_xaxes(title_text="position", type="category")
    fig.update_yaxes(title_text="layer", type="category")
    fig.update_layout(title=title, height=max(300, 40 + 28 * n_layers))
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
