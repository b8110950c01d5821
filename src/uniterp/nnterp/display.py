"""nnterp's ``display`` on uniterp's figures: ``plot_topk_tokens`` and ``prompts_to_df``.

Example::

    >>> from uniterp.nnterp.display import plot_topk_tokens, prompts_to_df
    >>> fig = plot_topk_tokens(logit_lens(model, "The capital of France is")[0], model.tokenizer, k=5)
    >>> fig.show()                                # the figure is returned, never shown for you

Needs plotly and pandas (``pip install 'uniterp[display]'``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import display as _display
from ._compat import unavailable

if TYPE_CHECKING:
    import pandas
    from plotly.graph_objects import Figure

__all__ = ["plot_topk_tokens", "prompts_to_df"]


def plot_topk_tokens(
    next_token_probs: torch.Tensor,
    tokenizer: Any,
    k: int = 4,
    title: str | None = None,
    use_token_ids: bool = False,
    file: str | os.PathLike[str] | None = None,
    save_html: bool = True,
    height: int = 300,
    width: int = 400,
    layers: Sequence[int] | None = None,
) -> Figure:
    """Heatmap of the top ``k`` tokens at each layer; nnterp's arguments, uniterp's figure.

    Example::

        >>> probs = logit_lens(model, "The capital of France is")        # (1, n_layers, vocab)
        >>> fig = plot_topk_tokens(probs[0], model.tokenizer, k=5, title="Top 5 tokens at each layer")

    `uniterp.plot_topk_tokens` (one panel per prompt, columns are layers,
    labels never guessed: a single row needs ``layers=``). Differences from
    nnterp: the figure is returned and not shown (call ``fig.show()``); its
    size follows its content, so ``height`` and ``width`` are accepted and
    unused; ``file`` ending in ``.html`` is written as HTML, another suffix as
    an image (needs the ``kaleido`` package) with an HTML copy when
    ``save_html``.

    Args:
        next_token_probs: ``(n_layers, vocab)``, ``(n_prompts, n_layers, vocab)``
            or ``(vocab,)`` probabilities.
        tokenizer: The tokenizer.
        k: Tokens per layer.
        title: Figure title.
        use_token_ids: Show token ids instead of token strings.
        file: Where to save the figure.
        save_html: With an image ``file``, also write ``file`` with ``.html``.
        height: Unused (see above).
        width: Unused (see above).
        layers: Layer numbers of the columns (uniterp's addition).
    """
    fig = _display.plot_topk_tokens(next_token_probs, tokenizer, k=k, title=title, layers=layers)
    if use_token_ids:
        data = torch.as_tensor(next_token_probs).detach().float().cpu()
        data = data.reshape(-1, *data.shape[-2:]) if data.ndim > 1 else data[None, None]
        top = data.topk(min(k, data.shape[-1]), dim=-1).indices  # (n_prompts, n_layers, k)
        for trace, ids in zip(fig.data, top):
            trace.text = [[str(int(i)) for i in row] for row in ids.T]
    if file is not None:
        path = Path(file)
        if path.suffix == ".html":
            fig.write_html(str(path), include_plotlyjs=True)
        else:
            try:
                fig.write_image(str(path), scale=3)
            except (ImportError, ValueError, RuntimeError) as error:
                raise unavailable(
                    f"plot_topk_tokens(file={str(path)!r})",
                    f"writing an image needs plotly's image export (kaleido): {error}",
                    "pip install kaleido, or give a file ending in .html",
                ) from error
            if save_html:
                fig.write_html(str(path.with_suffix(".html")), include_plotlyjs=True)
    return fig


def prompts_to_df(prompts: Sequence[Any], tokenizer: Any = None) -> pandas.DataFrame:
    """nnterp's table of prompts: one column per prompt; rows ``prompt``, ``<target>_string``
    and, with a tokenizer, ``<target>_tokens`` (the tokens as the tokenizer spells them).

    Example::

        >>> df = prompts_to_df(prompts, model.tokenizer)
        >>> df[0]["prompt"]

    uniterp's own `uniterp.prompts_to_df` gives one row per (prompt, category) instead.
    """
    try:
        import pandas as pd
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("prompts_to_df needs pandas: pip install 'uniterp[display]'") from error
    table: dict[int, dict[str, Any]] = {}
    for index, prompt in enumerate(prompts):
        column: dict[str, Any] = {"prompt": prompt.prompt}
        for name, strings in (prompt.target_strings or {}).items():
            column[f"{name}_string"] = strings
        if tokenizer is not None:
            for name, ids in prompt.target_tokens.items():
                column[f"{name}_tokens"] = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
        table[index] = column
    return pd.DataFrame.from_dict(table)
