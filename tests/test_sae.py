"""SAEs and transcoders built in code: each architecture against a hand computation, the exact
no-edit splice, normalisations, metrics, errors, and the one-matmul performance shape."""

from __future__ import annotations

import time

import pytest
import torch

from uniterp import InputError, ShapeError
from uniterp.sae import (
    ARCHITECTURES,
    SparseAutoencoder,
    Transcoder,
    evaluate_sae,
    explained_variance,
    fvu,
    l0,
    tensor_shapes,
)

D_IN, D_SAE, K = 16, 64, 5


def random_weights(
    architecture: str, d_in: int = D_IN, d_sae: int = D_SAE, d_out: int | None = None, skip=False
):
    g = torch.Generator().manual_seed(1)
    weights = {}
    for name, shape in tensor_shapes(architecture, d_in, d_sae, d_out, skip).items():
        weights[name] = torch.randn(shape, generator=g) * (0.3 if name.startswith("W") else 0.1)
    if "threshold" in weights:
        weights["threshold"] = weights["threshold"].abs()
    return weights


def build(architecture: str, **options) -> SparseAutoencoder:
    k = {"topk": K, "abstopk": K, "groupmax": 8}.get(architecture)
    skip = options.pop("skip_connection", False)
    return SparseAutoencoder(
        D_IN,
        D_SAE,
        architecture=architecture,
        k=k,
        weights=random_weights(architecture, skip=skip),
        skip_connection=skip,
        **options,
    )


def hand_encode(w: dict, architecture: str, x: torch.Tensor, apply_b_dec=True, k=None, rescale=False):
    """The formats' documented math, written out independently."""
    h = x - w["b_dec"] if apply_b_dec else x
    if architecture == "gated":
        gate = (h @ w["W_enc"] + w["b_gate"] > 0).float()
        magnitude = torch.relu(h @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"])  # SAELens's parametrisation
        return gate * magnitude
    pre = h @ w["W_enc"] + w["b_enc"]
    if rescale:
        pre = pre * w["W_dec"].norm(dim=-1)
    if architecture == "relu":
        return torch.relu(pre)
    if architecture == "jumprelu":
        return torch.where(pre > w["threshold"], torch.relu(pre), torch.zeros_like(pre))
    if architecture == "topk":
        rows, out = pre.reshape(-1, pre.shape[-1]), torch.zeros(pre.numel() // pre.shape[-1], pre.shape[-1])
        for i, row in enumerate(rows):  # per token, plainly
            top = torch.argsort(row, descending=True)[:k]
            out[i, top] = torch.relu(row[top])
        return out.reshape(pre.shape)
    if architecture == "abstopk":
        rows, out = pre.reshape(-1, pre.shape[-1]), torch.zeros(pre.numel() // pre.shape[-1], pre.shape[-1])
        for i, row in enumerate(rows):  # signed values of the k largest magnitudes
            top = torch.argsort(row.abs(), descending=True)[:k]
            out[i, top] = row[top]
        return out.reshape(pre.shape)
    if architecture == "groupmax":
        acts = torch.relu(pre)
        out = torch.zeros_like(acts)
        size = acts.shape[-1] // k
        for g in range(k):
            block = acts[..., g * size : (g + 1) * size]
            best = block.argmax(dim=-1, keepdim=True)
            out[..., g * size : (g + 1) * size].scatter_(-1, best, block.gather(-1, best))
        return out
    raise AssertionError(architecture)


def hand_decode(w: dict, latents: torch.Tensor, rescale=False) -> torch.Tensor:
    f = latents / w["W_dec"].norm(dim=-1) if rescale else latents
    return f @ w["W_dec"] + w["b_dec"]


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(3, 7, D_IN, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_encode_decode_match_hand_computation(architecture: str, apply_b_dec: bool, x: torch.Tensor) -> None:
    sae = build(architecture, apply_b_dec_to_input=apply_b_dec)
    w = random_weights(architecture)
    latents = sae.encode(x)
    assert latents.shape == (3, 7, D_SAE) and latents.dtype == torch.float32
    torch.testing.assert_close(latents, hand_encode(w, architecture, x, apply_b_dec, k=sae.k))
    torch.testing.assert_close(sae.decode(latents), hand_decode(w, latents))
    torch.testing.assert_close(sae(x), hand_decode(w, hand_encode(w, architecture, x, apply_b_dec, k=sae.k)))
    if architecture in ("topk", "abstopk"):
        assert bool(((latents != 0).sum(-1) <= K).all())
    if architecture == "abstopk":
        assert bool((latents < 0).any())  # signs are kept
    if architecture == "groupmax":
        assert bool(((latents != 0).unflatten(-1, (8, -1)).sum(-1) <= 1).all())


def test_topk_rescaled_by_decoder_norm(x: torch.Tensor) -> None:
    sae = build("topk", rescale_acts_by_decoder_norm=True)
    w = random_weights("topk")
    latents = sae.encode(x)
    torch.testing.assert_close(latents, hand_encode(w, "topk", x, k=K, rescale=True))
    torch.testing.assert_close(sae.decode(latents), hand_decode(w, latents, rescale=True))
    # differs from the unscaled SAE: the option is not ignored
    assert not torch.allclose(latents, build("topk").encode(x))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_unedited_splice_is_bit_exact(architecture: str, x: torch.Tensor) -> None:
    sae = build(architecture)
    x = x.clone()
    x[0, 0, :4] = -0.0  # the sign of zero survives too
    latents = sae.encode(x)
    out = sae.reconstruct_with_error(latents, x)
    assert out.dtype == x.dtype
    assert torch.equal(out.view(torch.int32), x.view(torch.int32))
    # the error term: forward + error is x up to rounding (exactly only when no rounding occurs)
    torch.testing.assert_close(sae.decode(latents) + sae.error(x), x, rtol=0, atol=1e-6)


def test_splice_in_bf16_model_with_fp32_sae(x: torch.Tensor) -> None:
    sae = build("jumprelu")
    xb = x.to(torch.bfloat16)
    out = sae.reconstruct_with_error(sae.encode(xb), xb)
    assert out.dtype == torch.bfloat16 and torch.equal(out.view(torch.int16), xb.view(torch.int16))


def test_edited_latents_move_the_output_by_the_decoder_row(x: torch.Tensor) -> None:
    sae = build("relu")
    latents = sae.encode(x)
    edited = latents.clone()
    edited[..., 3] += 2.0
    out = sae.reconstruct_with_error(edited, x)
    torch.testing.assert_close(out, x + 2.0 * sae.W_dec[3])
    # passing the clean reconstruction gives the same tensor
    clean = sae.decode(latents)
    assert torch.equal(sae.reconstruct_with_error(edited, x, clean_reconstruction=clean), out)


@pytest.mark.parametrize("architecture", ["relu", "jumprelu"])
@pytest.mark.parametrize("skip", [False, True])
def test_transcoder_predicts_output_site(architecture: str, skip: bool, x: torch.Tensor) -> None:
    d_out = 12
    w = random_weights(architecture, d_out=d_out, skip=skip)
    tc = Transcoder(D_IN, D_SAE, d_out, architecture=architecture, weights=w, skip_connection=skip)
    assert tc.is_transcoder and tc.d_out == d_out
    latents = tc.encode(x)
    torch.testing.assert_close(latents, hand_encode(w, architecture, x, apply_b_dec=False))
    expected = latents @ w["W_dec"] + w["b_dec"] + (x @ w["W_skip"].T if skip else 0)
    torch.testing.assert_close(tc(x), expected)
    y = torch.randn(3, 7, d_out)
    assert torch.equal(tc.reconstruct_with_error(latents, x, target=y), y)
    torch.testing.assert_close(tc.error(x, target=y), y - tc(x))
    with pytest.raises(InputError, match="target"):
        tc.reconstruct_with_error(latents, x)
    with pytest.raises(ShapeError, match="d_out=12"):
        tc.error(x, target=torch.randn(3, 7, D_IN))


def test_constant_norm_rescale(x: torch.Tensor) -> None:
    sae = build("relu", normalize_activations="constant_norm_rescale")
    w = random_weights("relu")
    coeff = D_IN**0.5 / x.norm(dim=-1, keepdim=True)
    latents = sae.encode(x)
    torch.testing.assert_close(latents, hand_encode(w, "relu", x * coeff))
    torch.testing.assert_close(sae.decode(latents, x=x), hand_decode(w, latents) / coeff)
    assert torch.equal(sae.reconstruct_with_error(latents, x), x)
    with pytest.raises(InputError, match="decode\\(latents, x=x\\)"):
        sae.decode(latents)


def test_layer_norm(x: torch.Tensor) -> None:
    sae = build("topk", normalize_activations="layer_norm")
    w = random_weights("topk")
    mu = x.mean(-1, keepdim=True)
    std = (x - mu).std(-1, keepdim=True)
    latents = sae.encode(x)
    torch.testing.assert_close(latents, hand_encode(w, "topk", (x - mu) / (std + 1e-5), k=K))
    torch.testing.assert_close(sae.decode(latents, x=x), hand_decode(w, latents) * std + mu)


def test_hook_z_heads(x: torch.Tensor) -> None:
    sae = build("relu", reshape_activations="hook_z")
    heads = x.unflatten(-1, (4, 4))  # (batch, seq, n_heads, d_head)
    torch.testing.assert_close(sae.encode(heads), sae.encode(x))
    out = sae(heads)
    assert out.shape == heads.shape
    torch.testing.assert_close(out.flatten(-2), sae(x))
    assert torch.equal(sae.reconstruct_with_error(sae.encode(heads), heads), heads)


def test_dtype_and_casting(x: torch.Tensor) -> None:
    sae = SparseAutoencoder(D_IN, D_SAE, weights=random_weights("relu"), dtype=torch.bfloat16)
    assert sae.dtype == torch.bfloat16 and sae.W_enc.dtype == torch.bfloat16
    assert sae.encode(x).dtype == torch.bfloat16  # inputs are cast to the SAE's dtype
    assert not sae.W_enc.requires_grad


def test_metadata_properties() -> None:
    sae = build("jumprelu")
    assert (sae.hook_name, sae.format, sae.model_name, sae.hook_layer, sae.statistics) == (
        None,
        None,
        None,
        None,
        {},
    )
    sae.metadata.hook_name = "blocks.3.hook_resid_post"
    assert sae.hook_name == "blocks.3.hook_resid_post" and "blocks.3.hook_resid_post" in repr(sae)


def test_module_errors(x: torch.Tensor) -> None:
    sae = build("relu")
    with pytest.raises(ShapeError, match="d_in=16"):
        sae.encode(torch.randn(2, 5))
    with pytest.raises(ShapeError, match="d_sae=64"):
        sae.decode(torch.randn(2, 5))
    with pytest.raises(InputError, match="floating-point"):
        sae.encode(torch.ones(2, D_IN, dtype=torch.long))
    with pytest.raises(InputError, match="meta"):
        sae.encode(torch.empty(2, D_IN, device="meta"))
    with pytest.raises(InputError, match="unknown SAE architecture 'mystery'"):
        SparseAutoencoder(D_IN, D_SAE, architecture="mystery")
    with pytest.raises(InputError, match="needs k"):
        SparseAutoencoder(D_IN, D_SAE, architecture="topk")
    with pytest.raises(InputError, match="multiple"):
        SparseAutoencoder(D_IN, D_SAE, architecture="groupmax", k=5)
    with pytest.raises(InputError, match="expected_average_only_in"):
        SparseAutoencoder(D_IN, D_SAE, normalize_activations="expected_average_only_in")
    with pytest.raises(InputError, match="missing SAE tensors \\['threshold'\\]"):
        SparseAutoencoder(D_IN, D_SAE, architecture="jumprelu", weights=random_weights("relu"))
    with pytest.raises(ShapeError, match="'W_dec' must have shape \\(64, 16\\)"):
        SparseAutoencoder(D_IN, D_SAE, weights={**random_weights("relu"), "W_dec": torch.zeros(64, 15)})
    with pytest.raises(InputError, match="use Transcoder"):
        SparseAutoencoder(D_IN, D_SAE, d_out=8)
    with pytest.raises(InputError, match="transcoders"):
        Transcoder(D_IN, D_SAE, 8, normalize_activations="layer_norm")
    with pytest.raises(InputError, match="apply_b_dec_to_input"):
        Transcoder(D_IN, D_SAE, 8, apply_b_dec_to_input=True)
    with pytest.raises(ShapeError, match="tokens"):
        build("relu", normalize_activations="constant_norm_rescale").decode(torch.zeros(4, D_SAE), x=x)


# --- metrics --------------------------------------------------------------------------------------


def test_fvu_formula_and_mask() -> None:
    g = torch.Generator().manual_seed(3)
    y = torch.randn(40, 6, generator=g, dtype=torch.float64)
    y_hat = y + 0.2 * torch.randn(40, 6, generator=g, dtype=torch.float64)
    expected = ((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert torch.isclose(fvu(y, y_hat), expected, rtol=1e-12)
    assert torch.isclose(explained_variance(y, y_hat), 1 - expected, rtol=1e-12)
    # per-token input shape and a padding mask: only the kept tokens count
    batch, mask = y.reshape(4, 10, 6), torch.rand(4, 10, generator=g) > 0.3
    keep = mask.reshape(-1)
    sub_y, sub_hat = y[keep], y_hat[keep]
    masked = ((sub_y - sub_hat) ** 2).sum() / ((sub_y - sub_y.mean(0)) ** 2).sum()
    assert torch.isclose(fvu(batch, y_hat.reshape(4, 10, 6), mask), masked, rtol=1e-12)
    assert float(fvu(y, y)) == 0.0
    # the mean predictor leaves all the variance unexplained
    assert torch.isclose(fvu(y, y.mean(0).expand_as(y)), torch.tensor(1.0, dtype=torch.float64))


def test_l0_counts_active_latents() -> None:
    latents = torch.zeros(2, 3, 10)
    latents[0, 0, :4] = 1.0
    latents[1, 2, :2] = -0.5
    assert float(l0(latents)) == pytest.approx(6 / 6)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    assert float(l0(latents, mask)) == pytest.approx(3.0)


def test_metric_errors() -> None:
    with pytest.raises(ShapeError, match="reconstruction"):
        fvu(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ShapeError, match="mask"):
        fvu(torch.randn(4, 3), torch.randn(4, 3), torch.ones(5, dtype=torch.bool))
    with pytest.raises(InputError, match="zero total variance"):
        fvu(torch.ones(4, 3), torch.zeros(4, 3))
    with pytest.raises(InputError, match="two tokens"):
        fvu(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(InputError, match="keeps none"):
        l0(torch.randn(2, 3), torch.zeros(2, dtype=torch.bool))


def test_evaluate_sae(x: torch.Tensor) -> None:
    sae = build("topk")
    m = evaluate_sae(sae, x)
    y_hat = hand_decode(random_weights("topk"), hand_encode(random_weights("topk"), "topk", x, k=K))
    assert m.fvu == pytest.approx(
        float(((x - y_hat) ** 2).sum() / ((x - x.reshape(-1, D_IN).mean(0)) ** 2).sum())
    )
    assert m.l0 == pytest.approx(float(K)) and m.n_tokens == 21
    assert m.explained_variance == pytest.approx(1 - m.fvu)
    tc = Transcoder(D_IN, D_SAE, D_IN, weights=random_weights("relu"))
    with pytest.raises(InputError, match="target"):
        evaluate_sae(tc, x)
    assert evaluate_sae(tc, x, target=x).n_tokens == 21


# --- performance ----------------------------------------------------------------------------------


def _matmul_calls(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = [event.name for event in prof.events()]
    assert len(names) < 50, names  # a fixed handful of ops, whatever d_sae and the number of tokens
    return sum(name in ("aten::mm", "aten::addmm", "aten::bmm") for name in names)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_one_matmul_each_way_at_scale(architecture: str) -> None:
    d_in, d_sae = 512, 4096
    k = {"topk": 64, "abstopk": 64, "groupmax": 64}.get(architecture)
    w = random_weights(architecture, d_in, d_sae)
    sae = SparseAutoencoder(d_in, d_sae, architecture=architecture, k=k, weights=w)
    x = torch.randn(8, 256, d_in)
    with torch.no_grad():
        latents = sae.encode(x)
        assert _matmul_calls(lambda: sae.encode(x)) == 1
        assert _matmul_calls(lambda: sae.decode(latents)) == 1
        start = time.perf_counter()
        sae.decode(sae.encode(x))
        elapsed = time.perf_counter() - start
    assert latents.shape == (8, 256, d_sae)
    # 2 x 8.6 GFLOP; a loop over latents or tokens would take minutes
    assert elapsed < 10.0, elapsed
