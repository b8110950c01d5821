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
        plot_topk_tokens(torch.rand(len(tokenizer)), tokenizer)
    with pytest.raises(ShapeError, match="n_positions"):
        plot_logit_lens(torch.rand(2, len(tokenizer)), tokenizer)
    with pytest.raises(InputError):
        plot_topk_tokens(_probs(2, len(tokenizer)), tokenizer, k=0)
    with pytest.raises(InputError):
        plot_logit_lens(_probs(2, 3, len(tokenizer)), tokenizer, tokens=[1, 2])
