"""Gradients and integrated gradients against plain torch autograd on native modules (no uniterp)."""

from __future__ import annotations

import pytest
import torch

from uniterp import InputError, StandardizedTransformer, UnavailableError
from uniterp.grads import gradients, integrated_gradients
from uniterp.metrics import last_token_metric, logit_diff
from uniterp.testing import tiny_model_path

from conftest import PROMPTS, load_tiny
from grad_reference import hf_model, reference_gradients
from reference import encode

GRAD_FAMILIES = [
    "gpt2",
    "gpt_neox",
    "gptj",
    "opt",
    "bloom",
    "falcon",
    "llama",
    "qwen2",
    "mixtral",
    "gemma2",
    "phi",
    "olmo2",
    "granite",
    "codegen",
    "cohere",
    "qwen3_moe",
]
MOE = {"mixtral", "qwen3_moe", "qwen2_moe"}
TWO = PROMPTS[:2]


def raw_metric(logits: torch.Tensor) -> torch.Tensor:
    """A metric of the full logits (not last-token only): two tokens' logits at two positions."""
    return logits[:, -1, 5] - logits[:, -1, 7] + 0.5 * logits[:, -2, 11]


@pytest.mark.parametrize("family", GRAD_FAMILIES)
def test_gradients_equal_autograd_on_native_modules(family: str) -> None:
    model = load_tiny(family)
    last = model.num_layers - 1
    sites = [
        ("token_embeddings", None),
        ("layers_output", 0),
        ("attentions_output", 1),
        ("mlps_output", last),
    ]
    sites += [("head_outputs", 1), ("layers_output", last)]
    if family not in MOE:
        sites.append(("mlp_neurons", 0))
    names = [s if layer is None else f"{s}.{layer}" for s, layer in sites]
    got = gradients(model, TWO, raw_metric, names)
    want = reference_gradients(family, model, TWO, raw_metric, sites)
    for name, expected in zip(names, want):
        assert got[name].shape == expected.shape, name
        torch.testing.assert_close(got[name], expected, atol=1e-6, rtol=1e-5, msg=name)
    assert all(p.grad is None for p in model._module.parameters())


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_last_token_metric_gives_the_same_gradients(family: str) -> None:
    model = load_tiny(family)
    metric = logit_diff(model, 5, 7)
    got = gradients(model, TWO, metric, ["layers_output.1", "token_embeddings"])
    want = reference_gradients(
        family,
        model,
        TWO,
        lambda lg: lg[:, -1, 5] - lg[:, -1, 7],
        [("layers_output", 1), ("token_embeddings", None)],
    )
    torch.testing.assert_close(got["layers_output.1"], want[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got["token_embeddings"], want[1], atol=1e-6, rtol=1e-5)
    expected = sum(float(v) for v in _logit_diffs(model, TWO))
    assert abs(float(got.metric) - expected) < 1e-4


def _logit_diffs(model: StandardizedTransformer, prompts: list[str]) -> torch.Tensor:
    hf = hf_model(model.model_type)
    with torch.no_grad():
        logits = hf(**encode(model, prompts)).logits
    return logits[:, -1, 5] - logits[:, -1, 7]


def test_aliases_bare_names_and_values() -> None:
    model = load_tiny("llama")
    got = gradients(
        model, TWO, raw_metric, ["blocks.1.attn.hook_z", "mlps_output", "blocks.0.hook_resid_post"]
    )
    assert got.keys()[:4] == [
        "mlps_output.0",
        "blocks.0.hook_resid_post",
        "blocks.1.attn.hook_z",
        "mlps_output.1",
    ]
    assert [k for k in got.keys() if k.startswith("mlps_output")] == [f"mlps_output.{i}" for i in range(3)]
    direct = gradients(model, TWO, raw_metric, ["head_outputs.1", "layers_output.0"])
    torch.testing.assert_close(got["blocks.1.attn.hook_z"], direct["head_outputs.1"], atol=0, rtol=0)
    torch.testing.assert_close(got["blocks.0.hook_resid_post"], direct["layers_output.0"], atol=0, rtol=0)
    with torch.no_grad(), model.trace(TWO):
        h = model.layers_output[0].save()
    torch.testing.assert_close(direct.values["layers_output.0"], h, atol=0, rtol=0)


def test_a_prompt_alone_equals_the_prompt_in_a_padded_batch() -> None:
    model = load_tiny("qwen2")
    both = gradients(model, TWO, raw_metric, ["layers_output.1"])["layers_output.1"]
    alone = gradients(model, TWO[1:], raw_metric, ["layers_output.1"])["layers_output.1"]
    n = alone.shape[1]
    torch.testing.assert_close(both[1, -n:], alone[0], atol=1e-6, rtol=1e-5)
    assert torch.all(both[1, :-n] == 0)


def test_no_grad_callers_get_gradients_and_the_model_keeps_no_state() -> None:
    model = load_tiny("gpt2")
    with torch.no_grad():
        got = gradients(model, TWO, raw_metric, ["layers_output.0"])
    assert got["layers_output.0"].abs().sum() > 0
    assert not got["layers_output.0"].requires_grad
    assert all(p.grad is None for p in model._module.parameters())
    with torch.inference_mode(), pytest.raises(InputError, match="inference_mode"):
        gradients(model, TWO, raw_metric, ["layers_output.0"])


def test_frozen_parameters_still_give_gradients_of_values() -> None:
    model = load_tiny("llama")
    want = gradients(model, TWO, raw_metric, ["layers_output.1", "head_outputs.0"])
    model.requires_grad_(False)
    try:
        got = gradients(model, TWO, raw_metric, ["layers_output.1", "head_outputs.0"])
    finally:
        model.requires_grad_(True)
    for key in want.keys():
        torch.testing.assert_close(got[key], want[key], atol=0, rtol=0)


@pytest.mark.parametrize(
    ("metric", "match"),
    [
        (lambda lg: lg[:, -1, :3], "returned shape"),
        (lambda lg: 1.0, "returned a float"),
        (lambda lg: lg[:, -1, 0].detach(), "does not depend"),
        (lambda lg: lg[:, -1].argmax(-1), "floating-point"),
        ("not callable", "callable"),
    ],
)
def test_bad_metrics_are_refused(metric: object, match: str) -> None:
    model = load_tiny("gpt2")
    with pytest.raises(InputError, match=match):
        gradients(model, TWO, metric, ["layers_output.0"])


def test_bad_sites_and_prompts_are_refused() -> None:
    model = load_tiny("gpt2")
    with pytest.raises(InputError, match="empty"):
        gradients(model, [], raw_metric, ["layers_output.0"])
    with pytest.raises(InputError, match="not a per-layer value"):
        gradients(model, TWO, raw_metric, ["layer_outputs.0"])
    with pytest.raises(InputError, match="read-only|cannot be edited"):
        gradients(model, TWO, raw_metric, ["blocks.0.ln1.hook_normalized"])
    with pytest.raises(InputError, match="next_token_probs"):
        gradients(model, TWO, raw_metric, ["next_token_probs"])
    with pytest.raises(InputError, match="already requested"):
        gradients(model, TWO, raw_metric, ["layers_output.0", "blocks.0.hook_resid_post"])
    with pytest.raises(UnavailableError, match="no rotary"):
        gradients(model, TWO, raw_metric, ["queries_pre_rotary.0"])
    with pytest.raises(UnavailableError, match="enable_attention_probs"):
        gradients(model, TWO, raw_metric, ["attention_probabilities.0"])
    with pytest.raises(UnavailableError, match="enable_attention_probs"):
        gradients(model, TWO, raw_metric, ["layers_output.0"], freeze="attention_probabilities")
    with pytest.raises(InputError, match="cannot be frozen"):
        gradients(model, TWO, raw_metric, ["layers_output.0"], freeze="mlp")


def test_expert_indices_have_no_gradient() -> None:
    model = load_tiny("mixtral")
    with pytest.raises(InputError, match="integers"):
        gradients(model, TWO, raw_metric, ["expert_indices.0"])


# -- frozen attention patterns and norm scales ------------------------------------------------

_EAGER: dict[str, StandardizedTransformer] = {}


def eager_model(family: str) -> StandardizedTransformer:
    if family not in _EAGER:
        _EAGER[family] = StandardizedTransformer(tiny_model_path(family), enable_attention_probs=True)
    return _EAGER[family]


def _frozen_rms(offset: float):
    def forward(self, x):
        h = x.float()
        scale = (
            (
                h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon
                if hasattr(self, "variance_epsilon")
                else h.pow(2).mean(-1, keepdim=True) + self.eps
            )
            .sqrt()
            .detach()
        )
        return ((h / scale) * (offset + self.weight.float())).to(x.dtype)

    return forward


def _frozen_layer_norm(self, x):
    centred = x - x.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt().detach()
    return centred / scale * self.weight + self.bias


class _DetachedSoftmax:
    """``torch.nn.functional.softmax`` returning detached probabilities (every softmax of the forward)."""

    def __enter__(self):
        self.original = torch.nn.functional.softmax

        def softmax(*args, **kwargs):
            return self.original(*args, **kwargs).detach()

        torch.nn.functional.softmax = softmax

    def __exit__(self, *exc):
        torch.nn.functional.softmax = self.original


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize(
    "freeze", [("norm_scales",), ("attention_probabilities",), ("attention_probabilities", "norm_scales")]
)
def test_frozen_gradients_equal_a_hand_frozen_reference(family: str, freeze: tuple[str, ...]) -> None:
    model = eager_model(family)
    hf = hf_model(family, "eager")
    sites = [("token_embeddings", None), ("layers_output", 0), ("mlps_output", 1)]
    got = gradients(
        model, TWO, raw_metric, ["token_embeddings", "layers_output.0", "mlps_output.1"], freeze=freeze
    )
    plain = gradients(model, TWO, raw_metric, ["layers_output.0"])
    originals = {}
    if "norm_scales" in freeze:
        for module in hf.modules():
            name = type(module).__name__
            if "RMSNorm" in name:
                originals[module] = module.forward
                module.forward = _frozen_rms(1.0 if "Gemma" in name else 0.0).__get__(module)
            elif isinstance(module, torch.nn.LayerNorm):
                originals[module] = module.forward
                module.forward = _frozen_layer_norm.__get__(module)
        assert originals
    try:
        if "attention_probabilities" in freeze:
            with _DetachedSoftmax():
                want = reference_gradients(family, model, TWO, raw_metric, sites, hf=hf)
        else:
            want = reference_gradients(family, model, TWO, raw_metric, sites, hf=hf)
    finally:
        for module, forward in originals.items():
            module.forward = forward
    for (site, layer), expected in zip(sites, want):
        name = site if layer is None else f"{site}.{layer}"
        torch.testing.assert_close(got[name], expected, atol=1e-6, rtol=1e-5, msg=name)
    # freezing changes the gradient (the reference is not the plain one)
    assert (got["layers_output.0"] - plain["layers_output.0"]).abs().max() > 1e-5
    torch.testing.assert_close(got.metric, plain.metric, atol=1e-5, rtol=1e-6)


def test_a_norm_of_another_kind_is_refused() -> None:
    from uniterp._freeze import _VERIFIED

    model = load_tiny("llama")
    norm = model._module.model.norm
    # the final norm now multiplies by mean |x|: not gain * normalized(x) + bias any more
    handle = norm.register_forward_hook(lambda m, a, out: out * a[0].abs().mean(-1, keepdim=True))
    _VERIFIED.pop(norm, None)
    try:
        with pytest.raises(UnavailableError, match="model.norm.*cannot be frozen"):
            gradients(model, TWO, raw_metric, ["layers_output.0"], freeze="norm_scales")
    finally:
        handle.remove()
        _VERIFIED.pop(norm, None)


# -- integrated gradients ---------------------------------------------------------------------


CLEAN, CORRUPT = "The capital of France is", "The capital of Japan is"


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "gpt_neox", "opt"])
def test_integrated_gradients_are_complete(family: str) -> None:
    model = load_tiny(family)
    metric = logit_diff(model, 5, 7)
    for site in ("layers_output.0", "token_embeddings", "mlps_output.1"):
        ig = integrated_gradients(model, [CLEAN], metric, site, baseline=[CORRUPT], steps=256)
        assert abs(ig.metric_input - ig.metric_baseline) > 1e-3
        assert ig.completeness_error < 0.01, (site, ig.total, ig.metric_input, ig.metric_baseline)


def test_integrated_gradients_take_a_baseline_tensor() -> None:
    model = load_tiny("llama")
    metric = logit_diff(model, 5, 7)
    by_prompt = integrated_gradients(model, [CLEAN], metric, "token_embeddings", baseline=[CORRUPT], steps=16)
    by_tensor = integrated_gradients(
        model, [CLEAN], metric, "token_embeddings", baseline=by_prompt.baseline, steps=16
    )
    torch.testing.assert_close(by_prompt.attributions, by_tensor.attributions, atol=0, rtol=0)
    zero = integrated_gradients(model, [CLEAN], metric, "layers_output.1", steps=4)
    assert torch.all(zero.baseline == 0) and torch.isfinite(zero.attributions).all()


def test_integrated_gradients_endpoints_are_the_metric_on_the_runs() -> None:
    model = load_tiny("llama")
    metric = logit_diff(model, 5, 7)
    ig = integrated_gradients(
        model,
        ["The capital of France is"],
        metric,
        "layers_output.1",
        baseline=["The capital of Japan is"],
        steps=4,
    )
    assert abs(ig.metric_input - float(_logit_diffs(model, ["The capital of France is"])[0])) < 1e-4
    assert abs(ig.metric_baseline - float(_logit_diffs(model, ["The capital of Japan is"])[0])) < 1e-4
    # one step of the midpoint rule is the gradient at the midpoint times the difference
    one = integrated_gradients(
        model,
        ["The capital of France is"],
        metric,
        "layers_output.1",
        baseline=["The capital of Japan is"],
        steps=1,
        batch_size=1,
    )
    assert one.attributions.shape == one.inputs.shape


def test_integrated_gradients_batches_give_the_same_result() -> None:
    model = load_tiny("gpt2")
    metric = logit_diff(model, 5, 7)
    a = integrated_gradients(model, TWO, metric, "layers_output.1", steps=6, batch_size=100)
    b = integrated_gradients(model, TWO, metric, "layers_output.1", steps=6, batch_size=2)
    torch.testing.assert_close(a.attributions, b.attributions, atol=1e-6, rtol=1e-5)
    assert a.per_position().shape == (2, a.inputs.shape[1])


def test_frozen_integrated_gradients_use_the_prompts_values() -> None:
    model = eager_model("llama")
    metric = logit_diff(model, 5, 7)
    ig = integrated_gradients(
        model,
        ["The capital of France is"],
        metric,
        "layers_output.0",
        baseline=["The capital of Japan is"],
        steps=64,
        freeze=("attention_probabilities", "norm_scales"),
    )
    assert ig.completeness_error < 0.01
    assert abs(ig.metric_input - float(_logit_diffs(model, ["The capital of France is"])[0])) < 1e-4
    # with everything frozen the metric is linear in layers_output beyond the MLPs' nonlinearity only,
    # and the baseline metric is computed with the prompts' patterns and scales
    plain = integrated_gradients(
        model,
        ["The capital of France is"],
        metric,
        "layers_output.0",
        baseline=["The capital of Japan is"],
        steps=8,
    )
    assert abs(plain.metric_baseline - ig.metric_baseline) > 1e-6


def test_integrated_gradients_refusals() -> None:
    model = load_tiny("gpt2")
    metric = logit_diff(model, 5, 7)
    with pytest.raises(InputError, match="steps"):
        integrated_gradients(model, TWO, metric, steps=0)
    with pytest.raises(InputError, match="one value"):
        integrated_gradients(model, TWO, metric, "layers_output")
    with pytest.raises(InputError, match="tokens"):
        integrated_gradients(model, ["The capital of France is"], metric, baseline=["one two"])
    from uniterp import ShapeError

    with pytest.raises(ShapeError, match="broadcast"):
        integrated_gradients(model, ["The capital of France is"], metric, baseline=torch.zeros(3, 7))
    assert last_token_metric(lambda x: x[:, 0]).last_only
