"""Values inside attention and MLPs against references built without uniterp.

References: plain forward hooks on the native projections, the tensors a registered
attention function receives (every family's own kernel inputs), and the inputs of
each family's own ``apply_rotary_pos_emb`` captured by wrapping that function.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import torch
from transformers import AttentionInterface, AttentionMaskInterface, AutoModelForCausalLM
from transformers.masking_utils import eager_mask

from uniterp import ShapeError, StandardizedTransformer, UnavailableError
from uniterp.testing import TINY_FAMILIES, tiny_model_path

from conftest import PROMPTS, load_tiny
from reference import DOWN, NATIVE, O_PROJ, encode, hooks

TWO = PROMPTS[:2]

MOE = {"mixtral", "qwen2_moe", "qwen3_moe"}  # no single down projection (DOWN leaves them out)
# Families whose attention computes inline (no kernel call) or in one of several branches.
NO_KERNEL = {"bloom": "calls no attention kernel", "falcon": "calls the kernel in 2 places"}
# Families whose rotary is applied in several calls, or that have none.
NO_PRE_ROTARY = {
    "gpt2": "no rotary",
    "gpt_bigcode": "no rotary",
    "opt": "no rotary",
    "bloom": "no rotary",
    "gptj": "rotary embedding in 4 calls",
    "codegen": "rotary embedding in 4 calls",
    "phi": "partial rotary: the rotary function receives part of each head",
    "stablelm": "partial rotary: the rotary function receives part of each head",
}

# -- references --------------------------------------------------------------------------------

_KERNEL: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []


def _recording_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any):
    _KERNEL.append((query.detach().clone(), key.detach().clone(), value.detach().clone()))
    eager = sys.modules[type(module).__module__].eager_attention_forward
    return eager(module, query, key, value, attention_mask, **kwargs)


def _register(name: str, function: Any) -> None:
    """A custom attention function, with the additive mask eager attention expects."""
    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, eager_mask)


_register("uniterp_test_record", _recording_attention)
_HF: dict[tuple[str, bool], torch.nn.Module] = {}


def _reference(family: str, record: bool = False) -> torch.nn.Module:
    """A plain HF copy (default attention), or one whose attention records its kernel inputs (eager)."""
    if (family, record) not in _HF:
        kwargs = {"attn_implementation": "uniterp_test_record"} if record else {}
        _HF[family, record] = AutoModelForCausalLM.from_pretrained(tiny_model_path(family), **kwargs).eval()
    return _HF[family, record]


def _kernel_inputs(model: StandardizedTransformer, family: str) -> list[tuple[torch.Tensor, ...]]:
    _KERNEL.clear()
    with torch.no_grad():
        _reference(family, record=True)(**encode(model, TWO))
    return list(_KERNEL)


def _real(x: torch.Tensor, model: StandardizedTransformer, seq_dim: int) -> torch.Tensor:
    """The positions of real tokens (padding rows differ between attention kernels, by design)."""
    mask = encode(model, TWO)["attention_mask"].bool()
    moved = x.movedim(seq_dim, 1)  # (batch, seq, ...)
    return moved[mask]


def _module_io(family: str, model: StandardizedTransformer, rel: str, layer: int = 0) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def grab(_m: Any, args: Any, kwargs: Any, out: Any) -> None:
        seen["in"] = (args[0] if args else next(iter(kwargs.values()))).detach().clone()
        seen["out"] = out

    stack = NATIVE[family][0]
    with torch.no_grad(), hooks(_reference(family), {f"{stack}.{layer}.{rel}": grab}):
        _reference(family)(**encode(model, TWO))
    return seen


def _read(model: StandardizedTransformer, sites: list[str], layer: int = 0) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad(), model.trace(TWO):
        for site in sites:
            out[site] = getattr(model, site)[layer].save()
    return out


# -- the values -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_head_outputs_are_the_output_projection_input_split_per_head(family: str) -> None:
    model = load_tiny(family)
    native = _module_io(family, model, O_PROJ[family])["in"]
    got = _read(model, ["head_outputs"])["head_outputs"]
    b, s = native.shape[:2]
    assert got.shape == (b, s, model.num_heads, model.head_dim)
    assert torch.equal(got, native.view(b, s, model.num_heads, model.head_dim))


@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if f not in MOE])
def test_mlp_neurons_are_the_down_projection_input(family: str) -> None:
    model = load_tiny(family)
    native = _module_io(family, model, DOWN[family])["in"]
    got = _read(model, ["mlp_neurons"])["mlp_neurons"]
    if native.dim() == 2:  # OPT runs its MLP on flattened tokens
        native = native.view(got.shape)
    assert torch.equal(got, native)


@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if f not in NO_KERNEL])
def test_queries_keys_values_are_what_the_attention_kernel_receives(family: str) -> None:
    model = load_tiny(family)
    kernel = _kernel_inputs(model, family)
    assert len(kernel) == model.num_layers
    for layer in (0, model.num_layers - 1):
        got = _read(model, ["queries", "keys", "values"], layer)
        q, k, v = kernel[layer]
        assert got["queries"].shape == (2, model.num_heads, q.shape[2], model.head_dim)
        assert got["keys"].shape[1] == model.num_kv_heads  # grouped heads stay grouped
        for site, reference in (("queries", q), ("keys", k), ("values", v)):
            # eager (the recording reference) and sdpa differ only at padding positions
            torch.testing.assert_close(
                _real(got[site], model, 2), _real(reference, model, 2), rtol=0, atol=1e-5
            )


@pytest.mark.parametrize("family", [f for f in TINY_FAMILIES if f not in NO_PRE_ROTARY])
def test_pre_rotary_queries_and_keys_are_the_rotary_functions_inputs(family: str) -> None:
    model = load_tiny(family)
    modeling = sys.modules[type(_reference(family)).__module__]
    original = modeling.apply_rotary_pos_emb
    seen: list[tuple[torch.Tensor, ...]] = []

    def recording(q: torch.Tensor, k: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        seen.append((q.detach().clone(), k.detach().clone()))
        result = original(q, k, *args, **kwargs)
        seen.append(tuple(x.detach().clone() for x in result[:2]))
        return result

    modeling.apply_rotary_pos_emb = recording
    try:
        with torch.no_grad():
            _reference(family, record=family not in NO_KERNEL)(**encode(model, TWO))
    finally:
        modeling.apply_rotary_pos_emb = original
    got = _read(model, ["queries_pre_rotary", "keys_pre_rotary"])
    torch.testing.assert_close(got["queries_pre_rotary"], seen[0][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(got["keys_pre_rotary"], seen[0][1], rtol=0, atol=1e-6)
    # and the rotary embedding actually changes them (positions > 0)
    assert not torch.allclose(seen[1][0], seen[0][0])


@pytest.mark.parametrize("family", sorted(MOE))
def test_routing_of_a_mixture_of_experts(family: str) -> None:
    model = load_tiny(family)
    router = _module_io(family, model, "mlp.gate")
    experts = {}

    def grab(_m: Any, args: Any, kwargs: Any, out: Any) -> None:
        experts["args"] = [a.detach().clone() for a in args]

    stack = NATIVE[family][0]
    with torch.no_grad(), hooks(_reference(family), {f"{stack}.0.mlp.experts": grab}):
        _reference(family)(**encode(model, TWO))
    got = _read(model, ["router_logits", "expert_indices", "expert_weights"])
    logits = router["out"][0] if isinstance(router["out"], tuple) else router["out"]
    b, s = got["router_logits"].shape[:2]
    assert torch.equal(got["router_logits"], logits.view(b, s, -1))
    assert torch.equal(got["expert_indices"], experts["args"][1].view(b, s, -1))
    assert torch.equal(got["expert_weights"], experts["args"][2].view(b, s, -1))
    assert got["expert_indices"].dtype == torch.long
    with pytest.raises(UnavailableError, match="mixture of experts"):
        _read(model, ["mlp_neurons"])


# -- writes against hooks doing the same edit -------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "qwen3", "gemma2", "phi3", "opt", "bloom"])
def test_zeroing_a_head_equals_a_hook_zeroing_its_slice(family: str) -> None:
    model = load_tiny(family)
    head, d = 1, model.head_dim
    stack = NATIVE[family][0]

    def zero_head(_m: Any, args: Any, kwargs: Any) -> Any:
        x = args[0].clone()
        x[..., head * d : (head + 1) * d] = 0
        return (x, *args[1:]), kwargs

    module = _reference(family).get_submodule(f"{stack}.0.{O_PROJ[family]}")
    handle = module.register_forward_pre_hook(zero_head, with_kwargs=True)
    try:
        with torch.no_grad():
            reference = _reference(family)(**encode(model, TWO)).logits
    finally:
        handle.remove()
    with torch.no_grad(), model.trace(TWO):
        z = model.head_outputs[0].clone()
        z[:, :, head] = 0
        model.head_outputs[0] = z
        logits = model.logits.save()
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "qwen3", "gemma2"])
def test_writing_values_equals_an_attention_function_doing_the_same(family: str) -> None:
    model = load_tiny(family)

    def halve_values(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any):
        eager = sys.modules[type(module).__module__].eager_attention_forward
        return eager(module, query, key, value * 0.5, attention_mask, **kwargs)

    _register("uniterp_test_halve", halve_values)
    hf = AutoModelForCausalLM.from_pretrained(
        tiny_model_path(family), attn_implementation="uniterp_test_halve"
    )
    with torch.no_grad():
        reference = hf(**encode(model, TWO)).logits
    with torch.no_grad(), model.trace(TWO):
        for layer in range(model.num_layers):
            model.values[layer] = model.values[layer] * 0.5
        logits = model.logits.save()
    # eager (the reference) and sdpa differ only at padding positions
    torch.testing.assert_close(_real(logits, model, 1), _real(reference, model, 1), rtol=1e-4, atol=1e-5)


def test_internal_writes_are_checked() -> None:
    model = load_tiny("llama")
    for site in ("queries", "head_outputs", "mlp_neurons"):
        with pytest.raises(ShapeError, match=rf"{site}\[0\]"), torch.no_grad():
            with model.trace(TWO):
                getattr(model, site)[0] = torch.zeros(3)


# -- where they are not -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "site", "reason"),
    [
        ("bloom", "queries", "computes attention inline"),
        ("falcon", "keys", "in 2 places"),
        ("gpt2", "queries_pre_rotary", "no rotary"),
        ("gptj", "keys_pre_rotary", "parts of each head"),
        ("mixtral", "mlp_neurons", "mixture of experts"),
        ("llama", "router_logits", "not a sparse mixture of experts"),
    ],
)
def test_unavailable_values_say_why(family: str, site: str, reason: str) -> None:
    model = load_tiny(family)
    assert reason in model.support()[site].unavailable[0]
    with pytest.raises(UnavailableError, match=reason):
        with model.trace(TWO):
            getattr(model, site)[0].save()


@pytest.mark.parametrize("family", ["phi", "stablelm"])
def test_partial_rotary_is_refused_when_read(family: str) -> None:
    model = load_tiny(family)
    with pytest.raises(
        UnavailableError, match=r"shape \(2, 4, \d+, \d+\), not \(\*, 4, \*, 16\).*part of each head"
    ):
        with model.trace(TWO):
            model.queries_pre_rotary[0].save()


def test_state_space_layers_have_no_attention_internals() -> None:
    model = StandardizedTransformer(tiny_model_path("jamba"))
    report = model.support()
    attention_layers = set(report["attentions_output"].layers)
    assert set(report["queries"].layers) == attention_layers
    assert set(report["head_outputs"].layers) == attention_layers
    mamba = next(i for i in range(model.num_layers) if i not in attention_layers)
    assert "no softmax attention" in report["queries"].unavailable[mamba]


# -- attention scores --------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "opt", "bloom", "qwen2_moe"])
def test_attention_scores_softmax_to_the_probabilities(family: str) -> None:
    model = StandardizedTransformer(tiny_model_path(family), enable_attention_probs=True)
    assert model.attention_scores.available(0)
    with torch.no_grad(), model.trace(TWO):
        scores = model.attention_scores[0].save()
        probs = model.attention_probabilities[0].save()
    assert scores.shape == probs.shape
    torch.testing.assert_close(scores.float().softmax(-1), probs.float(), rtol=0, atol=1e-6)


def test_attention_scores_are_the_scaled_dot_products() -> None:
    model = StandardizedTransformer(tiny_model_path("llama"), enable_attention_probs=True)
    with torch.no_grad(), model.trace(TWO):
        q = model.queries[1].save()
        k = model.keys[1].save()
        scores = model.attention_scores[1].save()
    groups = model.num_heads // model.num_kv_heads
    k = k.repeat_interleave(groups, dim=1)
    by_hand = q @ k.transpose(-1, -2) / model.head_dim**0.5
    kept = scores > torch.finfo(scores.dtype).min / 2  # the mask adds 0 where it keeps a position
    assert kept.sum() > 0 and not kept.all()
    torch.testing.assert_close(scores[kept], by_hand[kept], atol=1e-5, rtol=0)


def test_scores_need_eager_attention() -> None:
    model = load_tiny("llama")
    with pytest.raises(UnavailableError, match="enable_attention_probs=True"):
        with model.trace(TWO):
            model.attention_scores[0].save()


def test_layers_without_rotary_embeddings_are_refused_at_load() -> None:
    # SmolLM3 skips the rotary embedding on some layers (no positional encoding there)
    model = StandardizedTransformer(tiny_model_path("smollm3"))
    report = model.support()["queries_pre_rotary"]
    assert report.layers and report.unavailable
    assert all("does not run on this layer" in why for why in report.unavailable.values())
    assert set(model.support()["queries"].layers) == set(range(model.num_layers))
    with torch.no_grad(), model.trace(TWO):
        for layer in report.layers:
            model.queries_pre_rotary[layer].save()


def test_latent_attention_keys_keep_their_own_width() -> None:
    # multi-head latent attention: queries and keys are wider than the values
    model = StandardizedTransformer(tiny_model_path("deepseek_v3"))
    layer = model.support()["queries"].layers[0]
    with torch.no_grad(), model.trace(TWO):
        q = model.queries[layer].save()
        k = model.keys[layer].save()
        v = model.values[layer].save()
    assert q.shape[1] == model.num_heads and q.shape[-1] == k.shape[-1] != v.shape[-1]
    assert model.support()["queries_pre_rotary"].unavailable[layer]  # refused with its reason
