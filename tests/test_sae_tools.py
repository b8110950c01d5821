"""Tools on attached SAEs against plain HF forwards with torch hooks: top latents, latent steering
(traces and generation) and attribution to the logits."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from sae_models import load, random_sae, reference
from uniterp._errors import InputError
from uniterp.sae_tools import (
    generate_with_latent_steering,
    latent_attribution,
    steer_latents,
    top_latents,
)

from conftest import PROMPTS
from reference import NATIVE, encode, first_tensor, hooks

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture
def clean() -> Iterator[None]:
    yield
    from sae_models import _MODELS

    for model in _MODELS.values():
        model.detach()


def _layer(family: str) -> str:
    return f"{NATIVE.get(family, NATIVE['llama'])[0]}.1"


def _native_latents(family: str, model, sae, prompts: list[str]) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    hf = reference(family)
    with torch.no_grad(), hooks(hf, {_layer(family): lambda m, a, k, out: seen.append(first_tensor(out))}):
        hf(**encode(model, prompts))
    return sae.encode(seen[0])


def _edited_logits(family: str, model, edit: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """HF logits with ``edit`` applied to layer 1's output by a plain hook."""

    def hook(_m, _a, _k, out):
        if isinstance(out, tuple):
            return (edit(out[0]), *out[1:])
        return edit(out)

    hf = reference(family)
    with torch.no_grad(), hooks(hf, {_layer(family): hook}):
        return hf(**encode(model, PROMPTS)).logits


@pytest.mark.parametrize("family", ["uniterp-tiny", "gpt2"])
def test_top_latents_are_the_top_of_the_encoding(family: str, clean: None) -> None:
    model = load(family)
    sae = random_sae(model.hidden_size, hook=HOOK)
    top = top_latents(model, sae, PROMPTS, k=4)
    assert model.attachments == {}  # attached for the call only
    latents = _native_latents(family, model, sae, PROMPTS)
    expected = latents.topk(4, dim=-1)
    assert top.values.shape == (len(PROMPTS), latents.shape[1], 4)
    torch.testing.assert_close(top.values, expected.values)
    mask = top.mask
    assert torch.equal(top.indices[mask], expected.indices[mask])
    peak = latents.masked_fill(~mask[..., None], float("-inf")).amax(dim=1).topk(4, dim=-1)
    assert torch.equal(top.prompt_indices, peak.indices)
    # a prompt alone gives what it gives inside the padded batch
    alone = top_latents(model, sae, PROMPTS[1], k=4)
    n = int(mask[1].sum())
    torch.testing.assert_close(alone.values[0, -n:], top.values[1, -n:], atol=1e-5, rtol=1e-5)
    frame = top.to_dataframe()
    assert len(frame) == int(mask.sum()) * 4
    assert list(frame.columns) == [
        "prompt_index",
        "prompt",
        "position",
        "token",
        "rank",
        "latent",
        "activation",
    ]
    assert frame.query("prompt_index == 1")["position"].max() == n - 1


def test_top_latents_of_an_attached_sae_by_name(clean: None) -> None:
    model = load("uniterp-tiny")
    sae = random_sae(model.hidden_size, hook=HOOK)
    model.attach(sae, check=False)
    by_name = top_latents(model, HOOK, PROMPTS, k=2)
    by_sae = top_latents(model, sae, PROMPTS, k=2)
    assert torch.equal(by_name.values, by_sae.values)
    assert list(model.attachments) == [HOOK]
    with pytest.raises(InputError, match="k must be"):
        top_latents(model, sae, PROMPTS, k=0)


@pytest.mark.parametrize("family", ["uniterp-tiny", "llama", "gpt2"])
def test_steering_adds_decoder_rows_like_a_plain_hook(family: str, clean: None) -> None:
    model = load(family)
    sae = random_sae(model.hidden_size, hook=HOOK)
    direction = 3.0 * sae.W_dec[5] - 2.0 * sae.W_dec[9]
    with steer_latents(model, sae, [5, 9], [3.0, -2.0]):
        with torch.no_grad(), model.trace(PROMPTS):
            everywhere = model.logits.save()
    with steer_latents(model, sae, 5, 3.0, positions=-1):
        with torch.no_grad(), model.trace(PROMPTS):
            last = model.logits.save()
    assert model.attachments == {}
    torch.testing.assert_close(
        everywhere, _edited_logits(family, model, lambda h: h + direction), atol=2e-5, rtol=1e-4
    )

    def at_last(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[:, -1] += 3.0 * sae.W_dec[5]
        return h

    torch.testing.assert_close(last, _edited_logits(family, model, at_last), atol=2e-5, rtol=1e-4)


def test_clamping_equals_editing_the_latents_in_the_trace(clean: None) -> None:
    model = load("uniterp-tiny")
    sae = random_sae(model.hidden_size, hook=HOOK)
    model.attach(sae, check=False)
    with steer_latents(model, HOOK, [3, 4], [5.0, 0.0], mode="clamp"):
        with torch.no_grad(), model.trace(PROMPTS):
            clamped = model.logits.save()
    with torch.no_grad(), model.trace(PROMPTS):
        latents = model.sae_latents[HOOK]
        latents[..., 3] = 5.0
        latents[..., 4] = 0.0
        edited = model.logits.save()
    assert torch.equal(clamped, edited)

    def splice(h: torch.Tensor) -> torch.Tensor:  # x + decode(clamped) - decode(encoded), by hand
        lat = sae.encode(h)
        new = lat.clone()
        new[..., 3], new[..., 4] = 5.0, 0.0
        return h + (new - lat) @ sae.W_dec

    torch.testing.assert_close(clamped, _edited_logits("uniterp-tiny", model, splice), atol=2e-5, rtol=1e-4)
    assert model.attachments[HOOK].edits == []


def _hf_generate(model, family: str, prompts: list[str], n: int, edit=None) -> torch.Tensor:
    def hook(_m, _a, _k, out):
        if edit is None:
            return None
        if isinstance(out, tuple):
            return (edit(out[0]), *out[1:])
        return edit(out)

    hf = reference(family)
    model.tokenizer.padding_side = "left"
    encoded = model.tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad(), hooks(hf, {_layer(family): hook}):
        return hf.generate(
            **encoded, max_new_tokens=n, do_sample=False, pad_token_id=model.tokenizer.pad_token_id
        )


@pytest.mark.parametrize("family", ["uniterp-tiny", "llama"])
def test_generation_with_latent_steering_matches_hf_generate_with_a_hook(family: str, clean: None) -> None:
    model = load(family)
    sae = random_sae(model.hidden_size, hook=HOOK)
    plain = generate_with_latent_steering(model, PROMPTS, sae, 5, 0.0, max_new_tokens=5)
    assert torch.equal(plain, _hf_generate(model, family, PROMPTS, 5))
    got = generate_with_latent_steering(model, PROMPTS, sae, 5, 40.0, max_new_tokens=5)
    expected = _hf_generate(model, family, PROMPTS, 5, edit=lambda h: h + 40.0 * sae.W_dec[5])
    assert torch.equal(got, expected)
    assert not torch.equal(got, plain)


@pytest.mark.parametrize("family", ["uniterp-tiny", "llama", "gemma2"])
def test_attribution_is_gradient_times_activation(family: str, clean: None) -> None:
    model = load(family)
    sae = random_sae(model.hidden_size, hook=HOOK)
    attr = latent_attribution(model, sae, PROMPTS)
    assert model.attachments == {}
    # the same by hand: a leaf for the latents spliced into a plain HF forward, one backward
    leaves: list[torch.Tensor] = []

    def splice(_m, _a, _k, out):
        h = first_tensor(out)
        lat = sae.encode(h).detach().requires_grad_(True)
        leaves.append(lat)
        new = h - (sae.decode(lat.detach()) - sae.decode(lat))  # == h in the forward, exactly
        return (new, *out[1:]) if isinstance(out, tuple) else new

    hf = reference(family)
    with torch.enable_grad(), hooks(hf, {_layer(family): splice}):
        logits = hf(**encode(model, PROMPTS)).logits
        targets = logits[:, -1].argmax(-1)
        metric = logits[:, -1].gather(-1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(metric, leaves[0])
    assert attr.targets == targets.tolist()
    assert attr.metric == pytest.approx(float(metric.detach()), rel=1e-5)
    torch.testing.assert_close(attr.latents, leaves[0].detach(), atol=1e-6, rtol=1e-5)
    scale = float(grad.abs().max())
    torch.testing.assert_close(attr.gradients, grad, atol=1e-5 * scale, rtol=1e-4)
    torch.testing.assert_close(attr.scores, leaves[0].detach() * grad, atol=1e-5 * scale, rtol=1e-4)
    assert attr.scores.abs().sum() > 0
    values, indices = attr.top(3)
    assert values.shape == indices.shape == (len(PROMPTS), 3)
    assert len(attr.to_dataframe(3)) == 3 * len(PROMPTS)


def test_attribution_with_a_target_string_and_a_custom_metric(clean: None) -> None:
    model = load("uniterp-tiny")
    sae = random_sae(model.hidden_size, hook=HOOK)
    paris = model.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    by_string = latent_attribution(model, sae, ["The capital of France is"], target=" Paris")
    assert by_string.targets == [paris]
    custom = latent_attribution(
        model, sae, ["The capital of France is"], metric=lambda lg: lg[:, -1, paris].sum()
    )
    assert custom.targets is None
    torch.testing.assert_close(custom.scores, by_string.scores)
    with pytest.raises(InputError, match="scalar"):
        latent_attribution(model, sae, PROMPTS, metric=lambda lg: lg[:, -1])
    with pytest.raises(InputError, match="token id"):
        latent_attribution(model, sae, PROMPTS, target=10**9)
    with pytest.raises(InputError, match="3 prompts"):
        latent_attribution(model, sae, PROMPTS, target=[1, 2])


def test_steering_refusals(clean: None) -> None:
    model = load("uniterp-tiny")
    sae = random_sae(model.hidden_size, hook=HOOK)
    for bad in (
        dict(latents=[96], values=1.0),
        dict(latents=[], values=1.0),
        dict(latents=[1, 2], values=[1.0]),
    ):
        with pytest.raises(InputError):
            with steer_latents(model, sae, **bad):  # type: ignore[arg-type]
                pass
    with pytest.raises(InputError, match="mode"):
        with steer_latents(model, sae, 1, 1.0, mode="scale"):  # type: ignore[arg-type]
            pass
    with pytest.raises(InputError, match="positions"):
        with steer_latents(model, sae, 1, 1.0, positions=[]):
            pass
    model.attach(sae, check=False)
    with pytest.raises(InputError, match="edit model.sae_latents"):
        with torch.no_grad(), model.trace(PROMPTS):
            with steer_latents(model, HOOK, 1, 1.0):
                pass
    assert model.attachments[HOOK].edits == []
    with pytest.raises(InputError, match="max_new_tokens"):
        generate_with_latent_steering(model, PROMPTS, HOOK, 1, 1.0, max_new_tokens=0)


def test_nested_steering_contexts_stack_and_unwind(clean: None) -> None:
    model = load("uniterp-tiny")
    sae = random_sae(model.hidden_size, hook=HOOK)
    model.attach(sae, check=False)
    with steer_latents(model, HOOK, 1, 2.0):
        with steer_latents(model, HOOK, 2, 3.0):
            assert len(model.attachments[HOOK].edits) == 2
            with torch.no_grad(), model.trace(PROMPTS):
                both = model.logits.save()
        assert len(model.attachments[HOOK].edits) == 1
    assert model.attachments[HOOK].edits == []
    expected = _edited_logits("uniterp-tiny", model, lambda h: h + 2.0 * sae.W_dec[1] + 3.0 * sae.W_dec[2])
    torch.testing.assert_close(both, expected, atol=2e-5, rtol=1e-4)
