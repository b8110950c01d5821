"""Labelled results of the patching and attribution tools: a tensor, its axes, a table and a heatmap."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ._errors import InputError

if TYPE_CHECKING:
    import pandas
    from plotly.graph_objects import Figure

__all__ = ["AttributionResult", "LabelledScores", "PatchResult"]


@dataclass
class LabelledScores:
    """A tensor with named, labelled axes.

    Attributes:
        values: The scores, one dimension per axis.
        axes: Axis names, e.g. ``("layer", "position")`` or ``("layer", "head")``.
        labels: Axis name -> one label per index (layers, positions, heads as ints).
        site: The value the scores are about (``"layers_output"``, ``"head_outputs"`` ...).
        tokens: The first prompt's tokens (for position axes), as text.
    """

    values: torch.Tensor
    axes: tuple[str, ...]
    labels: dict[str, list[Any]]
    site: str
    tokens: list[str] = field(default_factory=list)

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per element: a column per axis and ``value`` (needs pandas, the ``display`` extra).

        Example::

            >>> result.to_dataframe().head()
               layer  position  value
            0      0         0  -1.93
        """
        try:
            import pandas as pd
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("to_dataframe needs pandas: pip install 'uniterp[display]'") from error
        grids = torch.meshgrid(*[torch.arange(len(self.labels[a])) for a in self.axes], indexing="ij")
        columns: dict[str, Any] = {}
        for axis, grid in zip(self.axes, grids):
            labels = self.labels[axis]
            columns[axis] = [labels[i] for i in grid.flatten().tolist()]
        columns["value"] = self.values.detach().float().cpu().flatten().tolist()
        return pd.DataFrame(columns)

    def plot(
        self,
        title: str | None = None,
        save_html: str | os.PathLike[str] | None = None,
        colorscale: str = "RdBu",
    ) -> Figure:
        """A plotly heatmap (1-D: a bar chart; 3-D: one heatmap per index of the first axis).

        Example::

            >>> fig = result.plot(title="residual stream")      # never shown for you
            >>> fig.write_html("patching.html")
        """
        try:
            import plotly.graph_objects as go
            from plotly.subplots import make_subplots
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("plot needs plotly: pip install 'uniterp[display]'") from error
        values = self.values.detach().float().cpu()
        text = self._axis_text
        title = title or f"{self.site}: {' x '.join(self.axes)}"
        bound = float(values.abs().max()) if values.numel() else 1.0
        if values.dim() == 1:
            fig = go.Figure(go.Bar(x=text(self.axes[0]), y=values.tolist()))
            fig.update_layout(title=title, xaxis_title=self.axes[0], yaxis_title="value")
        elif values.dim() == 2:
            fig = go.Figure(self._heatmap(go, values, bound, colorscale))
            fig.update_layout(title=title, xaxis_title=self.axes[1], yaxis_title=self.axes[0])
        elif values.dim() == 3:
            first = self.axes[0]
            names = [f"{first} {label}" for label in self.labels[first]]
            fig = make_subplots(rows=len(names), cols=1, subplot_titles=names)
            for i in range(len(names)):
                fig.add_trace(
                    self._heatmap(go, values[i], bound, colorscale, self.axes[1:]), row=i + 1, col=1
                )
            fig.update_layout(title=title, height=max(300, 220 * len(names)))
        else:
            raise InputError(f"plot draws 1 to 3 axes; this result has {values.dim()}: {self.axes}")
        if save_html is not None:
            fig.write_html(os.fspath(save_html), include_plotlyjs=True)
        return fig

    def _axis_text(self, axis: str) -> list[str]:
        labels = self.labels[axis]
        if axis == "position" and self.tokens:
            return [f"{p}: {self.tokens[p]}" if 0 <= p < len(self.tokens) else str(p) for p in labels]
        return [str(label) for label in labels]

    def _heatmap(
        self,
        go: Any,
        values: torch.Tensor,
        bound: float,
        colorscale: str,
        axes: tuple[str, ...] | None = None,
    ) -> Any:
        rows, cols = axes or self.axes
        return go.Heatmap(
            z=values.tolist(),
            x=self._axis_text(cols),
            y=self._axis_text(rows),
            colorscale=colorscale,
            zmid=0.0,
            zmin=-bound,
            zmax=bound,
        )


@dataclass
class PatchResult(LabelledScores):
    """The metric after patching each index: activation patching's result.

    Example::

        >>> result = patch_sweep(model, clean, corrupted, metric, "layers_output", over=("layer", "position"))
        >>> result.values.shape                   # (n_layers, n_positions)
        >>> result.normalized()                   # 0 = as the patched run, 1 = as the source run
        >>> result.to_dataframe(); result.plot()

    Attributes:
        mode: ``"denoise"`` (clean values patched into the corrupted run) or
            ``"noise"`` (corrupted values patched into the clean run).
        clean_metric: The metric on the clean prompts.
        corrupted_metric: The metric on the corrupted prompts.
    """

    mode: str = "denoise"
    clean_metric: float = 0.0
    corrupted_metric: float = 0.0

    @property
    def base_metric(self) -> float:
        """The metric of the run being patched (corrupted when denoising)."""
        return self.corrupted_metric if self.mode == "denoise" else self.clean_metric

    @property
    def source_metric(self) -> float:
        """The metric of the run the patched values come from."""
        return self.clean_metric if self.mode == "denoise" else self.corrupted_metric

    @property
    def effects(self) -> torch.Tensor:
        """``values - base_metric``: how much each patch changed the metric."""
        return self.values - self.base_metric

    def normalized(self) -> torch.Tensor:
        """``(values - base) / (source - base)``: 0 where the patch did nothing, 1 where it restored the source."""
        return self.effects / (self.source_metric - self.base_metric)


@dataclass
class AttributionResult(LabelledScores):
    """Estimated effects of patching each index, from gradients (attribution patching).

    Example::

        >>> atp = attribution_patching(model, clean, corrupted, metric, "layers_output")
        >>> atp.values.shape                      # (n_layers, n_positions), like the matching sweep
        >>> atp.values                            # estimates of patch_sweep(...).effects

    Attributes:
        method: ``"atp"``, ``"atp-qk"`` (queries/keys through the exact softmax),
            ``"graddrop"`` (non-negative AtP* scores) ...
        mode: As in `PatchResult`.
        clean_metric: The metric on the clean prompts.
        corrupted_metric: The metric on the corrupted prompts.
    """

    method: str = "atp"
    mode: str = "denoise"
    clean_metric: float = 0.0
    corrupted_metric: float = 0.0

    @property
    def effects(self) -> torch.Tensor:
        """The estimated effects (the values)."""
        return self.values

    def normalized(self) -> torch.Tensor:
        """Effects relative to the full difference between the two runs' metrics."""
        base = self.corrupted_metric if self.mode == "denoise" else self.clean_metric
        source = self.clean_metric if self.mode == "denoise" else self.corrupted_metric
        return self.values / (source - base)
