"""Tests of uniterp.display: figure structure, HTML on request, no plotly at import."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from uniterp import InputError, ShapeError
from uniterp.prompts import Prompt
from uniterp.testing import build_tiny_tokenizer

pytest.importorskip("plotly")
pytest.importorskip("pandas")

from uniterp.display import plot_logit_lens, plot_topk_tokens, prompts_to_df  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(autouse=True)
def no_show(monkeypatch) -> None:
    import plotly.graph_objects as go

    def refuse(*_args, **_kwargs) -> None:
        raise AssertionError("display functions must never call show()")

    monkeypatch.setattr(go.Figure, "show", refuse)


def _probs(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).mul(3).softmax(-1)


def test_import_uniterp_does_not_import_plotly_or_pandas() -> None:
    code = (
        "import sys, uniterp, uniterp.display, uniterp.prompts, uniterp.activations, uniterp.steering\n"
        "bad = [m for m in ('plotly', 'pandas') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_topk_tokens_single(tokenizer, tmp_path) -> None:
    vocab = len(tokenizer)
    probs = _probs(3, vocab)  # (n_layers, vocab)
    fig = plot_topk_tokens(probs, tokenizer, k=4, title="lens", layers=[2, 5, 9])
    assert len(fig.data) == 1
    heat = fig.data[0]
    assert heat.type == "heatmap"
    z = torch.as_tensor(heat.z)
    assert z.shape == (4, 3)  # (k, n_layers)
    top = probs.topk(4, dim=-1)
    torch.testing.assert_close(z, top.values.T.float())
    for layer in range(3):
        assert heat.text[0][layer] == tokenizer.decode([int(probs[layer].argmax())]).replace("\n", "\\n")
    assert list(heat.x) == ["2", "5", "9"]
    assert "%{z" in heat.hovertemplate and "%{text}" in heat.hovertemplate
    assert fig.layout.title.text == "lens"
    assert list(tmp_path.iterdir()) == []  # nothing written unless asked


def test_topk_tokens_batch_and_html(tokenizer, tmp_path) -> None:
    probs = _probs(2, 3, len(tokenizer), seed=1)  # (n_prompts, n_layers, vocab)
    out = tmp_path / "topk.html"
    fig = plot_topk_tokens(probs, tokenizer, k=2, save_html=out, prompts=["a", "b"])
    assert len(fig.data) == 2
    for p, heat in enumerate(fig.data):
        torch.testing.assert_close(torch.as_tensor(heat.z), probs[p].topk(2, dim=-1).values.T.float())
    assert [a.text for a in fig.layout.annotations] == ["a", "b"]
    html = out.read_text()
    assert "plotly" in html.lower() and len(html) > 10_000


def test_logit_lens_figure(tokenizer, tmp_path) -> None:
    ids = tokenizer("The cat sat").input_ids
    probs = _probs(4, len(ids), len(tokenizer), seed=2)  # (n_layers, n_positions, vocab)
    fig = plot_logit_lens(probs, tokenizer, tokens=ids, title="grid", save_html=tmp_path / "grid.html")
    heat = fig.data[0]
    z = torch.as_tensor(heat.z)
    assert z.shape == (4, len(ids))
    torch.testing.assert_close(z, probs.max(-1).values.float())
    best = probs.argmax(-1)
    assert heat.text[3][1] == tokenizer.decode([int(best[3, 1])])
    assert list(heat.x)[1] == f"1: {tokenizer.decode([ids[1]])}"
    assert len(heat.customdata[0][0].split("<br>")) == 3
    assert (tmp_path / "grid.html").exists()


def test_prompts_to_df(tokenizer) -> None:
    prompts = [
        Prompt.from_strings(
            "The capital of France is", {"city": ["Paris", "Lyon"], "animal": "cat"}, tokenizer
        ),
        Prompt.from_strings("hello", "world", tokenizer),
    ]
    df = prompts_to_df(prompts, tokenizer)
    assert list(df.columns) == [
        "prompt_index",
        "prompt",
        "category",
        "target_strings",
        "target_tokens",
        "target_token_strings",
    ]
    assert len(df) == 3
    row = df[df.category == "city"].iloc[0]
    assert row.target_strings == ["Paris", "Lyon"]
    assert row.target_tokens == prompts[0].target_tokens["city"]
    assert row.target_token_strings == [tokenizer.decode([t]) for t in row.target_tokens]


def test_bad_shapes(tokenizer) -> None:
    with pytest.raises(ShapeError, match="n_layers, vocab"):
        plot_topk_tokens(torch.tensor(0.5), tokenizer)
    with pytest.raises(ShapeError, match="n_positions"):
        plot_logit_lens(torch.rand(2, len(tokenizer)), tokenizer)
    with pytest.raises(InputError):
        plot_topk_tokens(_probs(2, len(tokenizer)), tokenizer, k=0)
    with pytest.raises(InputError):
        plot_logit_lens(_probs(2, 3, len(tokenizer)), tokenizer, tokens=[1, 2])


# -- shapes that do not fit are refused, labels are true (issue 9) ----------------------


def test_logit_lens_refuses_one_position_output(tokenizer) -> None:
    lens = _probs(1, 6, len(tokenizer))  # logit_lens(model, prompt): (n_prompts=1, n_layers, vocab)
    with pytest.raises(ShapeError, match=r"positions=list\(range\(n_tokens\)\)") as info:
        plot_logit_lens(lens, tokenizer)
    assert "plot_topk_tokens" in str(info.value) and "layers=[" in str(info.value)
    with pytest.raises(ShapeError, match="ambiguous"):
        plot_logit_lens(lens, tokenizer, layers=[0, 1])
    fig = plot_logit_lens(lens, tokenizer, layers=[4])  # really one layer by six positions
    assert list(fig.data[0].y) == ["4"] and len(fig.data[0].x) == 6


def test_logit_lens_takes_the_four_dim_grid_with_a_prompt_index(tokenizer) -> None:
    grid = _probs(2, 3, 4, len(tokenizer), seed=5)  # (n_prompts, n_layers, n_positions, vocab)
    with pytest.raises(ShapeError, match="prompt_index"):
        plot_logit_lens(grid, tokenizer)
    with pytest.raises(InputError, match="out of range"):
        plot_logit_lens(grid, tokenizer, prompt_index=2)
    with pytest.raises(InputError, match="4-D"):
        plot_logit_lens(grid[1], tokenizer, prompt_index=0)
    fig = plot_logit_lens(grid, tokenizer, prompt_index=1)
    torch.testing.assert_close(torch.as_tensor(fig.data[0].z), grid[1].max(-1).values)
    single = plot_logit_lens(grid[1:], tokenizer)  # one prompt: no index needed
    torch.testing.assert_close(torch.as_tensor(single.data[0].z), grid[1].max(-1).values)
    with pytest.raises(ShapeError, match="one layer"):
        plot_logit_lens(grid[:, :1], tokenizer, prompt_index=0)


def test_topk_tokens_labels_are_true(tokenizer) -> None:
    vocab = len(tokenizer)
    next_token = _probs(vocab, seed=3)  # one prompt's next_token_probs: no layer
    fig = plot_topk_tokens(next_token, tokenizer, k=3)
    assert list(fig.data[0].x) == ["next token"]
    assert fig.layout.xaxis.title.text in (None, "")
    torch.testing.assert_close(torch.as_tensor(fig.data[0].z)[:, 0], next_token.topk(3).values)
    with pytest.raises(ShapeError, match=r"layers=\[i\]"):
        plot_topk_tokens(_probs(1, vocab), tokenizer)  # (1, vocab): a layer? which one?
    with pytest.raises(ShapeError, match="layer dimension of 1"):
        plot_topk_tokens(_probs(3, 1, vocab), tokenizer)
    assert list(plot_topk_tokens(_probs(3, 1, vocab), tokenizer, layers=[7]).data[0].x) == ["7"]
    with pytest.raises(ShapeError, match="positions dimension"):
        plot_topk_tokens(_probs(1, 3, 4, vocab), tokenizer)
    with pytest.raises(InputError, match="no layer dimension"):
        plot_topk_tokens(next_token, tokenizer, layers=[3])
    with pytest.raises(InputError, match="prompt"):
        plot_topk_tokens(_probs(2, 3, vocab), tokenizer, prompts=["only one"])


def test_plots_of_real_lens_output() -> None:
    from uniterp import StandardizedTransformer
    from uniterp._tooling import tokenize
    from uniterp.lens import logit_lens
    from uniterp.tiny import resolve_model_name

    model = StandardizedTransformer(resolve_model_name("uniterp-tiny"))
    prompt = "The capital of France is"
    with pytest.raises(ShapeError, match="ambiguous"):
        plot_logit_lens(logit_lens(model, prompt), model.tokenizer)  # the call from the issue
    ids = tokenize(model, [prompt])[0]
    grid = logit_lens(model, prompt, positions=list(range(len(ids))))
    fig = plot_logit_lens(grid, model.tokenizer, tokens=ids)
    assert list(fig.data[0].y) == [str(i) for i in range(model.num_layers)]
    assert fig.data[0].text[-1][-1] == model.tokenizer.decode([int(grid[0, -1, -1].argmax())])
    with torch.no_grad(), model.trace(prompt):
        probs = model.next_token_probs.save()
    torch.testing.assert_close(torch.as_tensor(fig.data[0].z)[-1, -1], probs[0].max())


# -- layout geometry: nothing overlaps, computed without a browser (issue 9) ----------------
# Text heights are estimated independently of uniterp.display: a line of text takes
# 1.25 x its font size, plus the padding plotly puts around tick labels and titles.


def _font(fig, obj, default: float = 12.0) -> float:
    """The font size of ``obj`` (an annotation, a title or a font itself), else the default."""
    font = getattr(obj, "font", obj) if obj is not None else None
    size = getattr(font, "size", None) if font is not None else None
    if size is None and fig.layout.font is not None and fig.layout.font.size is not None:
        size = fig.layout.font.size
    return float(size or default)


def _panels(fig) -> list[dict[str, float]]:
    """Each subplot's pixel band, from the top of the figure: the plot, its title above it,
    its x tick labels and x axis title below it."""
    layout = fig.layout
    height, top, bottom = layout.height, layout.margin.t, layout.margin.b
    assert height and top is not None and bottom is not None, "heights must be set from the content"
    area = height - top - bottom
    titles = {round(a.y, 6): a for a in (layout.annotations or ())}
    panels = []
    for name in sorted(k for k in layout if k.startswith("xaxis")):
        xaxis = layout[name]
        yaxis = layout["yaxis" + name[5:]]
        low, high = yaxis.domain or (0.0, 1.0)
        plot_top, plot_bottom = top + (1 - high) * area, top + (1 - low) * area
        title = titles.get(round(high, 6))
        title_px = 1.25 * _font(fig, title, 16) + 4 if title is not None else 0.0
        ticks_px = 1.25 * _font(fig, xaxis.tickfont) + 6
        axis_title = xaxis.title.text if xaxis.title is not None else None
        axis_px = 1.25 * _font(fig, xaxis.title, 14) + 6 if axis_title else 0.0
        panels.append(
            {
                "title_top": plot_top - title_px,
                "plot_top": plot_top,
                "plot_bottom": plot_bottom,
                "labels_bottom": plot_bottom + ticks_px + axis_px,
            }
        )
    return sorted(panels, key=lambda p: p["plot_top"])


def _assert_no_overlap(fig) -> None:
    panels = _panels(fig)
    figure_title = fig.layout.title.text if fig.layout.title is not None else None
    first_free = 1.25 * 17 + 12 if figure_title else 0.0
    assert panels[0]["title_top"] >= first_free, panels[0]
    for upper, lower in zip(panels, panels[1:]):
        # the upper panel's tick labels and axis title end before the lower panel's title
        assert upper["labels_bottom"] <= lower["title_top"], (upper, lower)
    assert panels[-1]["labels_bottom"] <= fig.layout.height, panels[-1]


@pytest.mark.parametrize("n_prompts", [1, 2, 3, 6])
@pytest.mark.parametrize("k", [1, 3, 5, 10])
@pytest.mark.parametrize("title", [None, "a title"])
def test_topk_tokens_layout_has_room_for_every_label(tokenizer, n_prompts: int, k: int, title) -> None:
    probs = _probs(n_prompts, 6, len(tokenizer), seed=n_prompts)
    prompts = [f"prompt {i}" for i in range(n_prompts)]
    fig = plot_topk_tokens(probs, tokenizer, k=k, prompts=prompts, title=title)
    _assert_no_overlap(fig)
    panels = _panels(fig)
    for panel in panels:  # every rank row keeps a readable height whatever the number of panels
        assert (panel["plot_bottom"] - panel["plot_top"]) / k >= 18, panel


@pytest.mark.parametrize("n_layers, n_positions", [(2, 3), (6, 5), (24, 12), (40, 40)])
def test_logit_lens_layout_has_room_for_every_label(tokenizer, n_layers: int, n_positions: int) -> None:
    ids = (list(range(20, 60)) * 2)[:n_positions]
    fig = plot_logit_lens(_probs(n_layers, n_positions, len(tokenizer)), tokenizer, tokens=ids, title="grid")
    _assert_no_overlap(fig)
    panel = _panels(fig)[0]
    assert (panel["plot_bottom"] - panel["plot_top"]) / n_layers >= 18, panel
