"""The plain-hook read path (`uniterp._fastpath`) gives what a trace gives, bit for bit.

The families cover every way a value is laid out natively: tuple and tensor outputs
(GPT-2, Llama), a flattened MLP (OPT), sequence-first hidden states (XLNet), several
residual streams split or packed (DeepSeek-V4, Qwen4-exp) and values the model edits
in place later, handed out as copies (Falcon).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import uniterp._fastpath as fastpath
from uniterp import StandardizedTransformer
from uniterp._fastpath import Read, fast_path_available, read_values, text_encoding
from uniterp._probes import SITE_ORDER
from uniterp._tooling import encode_prompts, last_token_states
from uniterp.activations import get_token_activations
from uniterp.lens import logit_lens
from uniterp.testing import tiny_model_path

from conftest import load_tiny

FAMILIES = ["gpt2", "llama", "opt", "xlnet", "deepseek_v4", "qwen4_exp_text", "falcon"]
PROMPTS = ["The Eiffel Tower is in the city of", "hello world", "one two three"]


def _model(family: str) -> StandardizedTransformer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_tiny(family)


def _sites(model: StandardizedTransformer) -> dict[str, dict[int, object]]:
    """Every value of every layer that plain hooks can read: site -> {layer: locator}."""
    binding = model.binding
    found: dict[str, dict[int, object]] = {"token_embeddings": {0: binding.layout.token_embeddings}}
    for site in SITE_ORDER:
        locs = {i: binding.locator(site, i) for i in range(model.num_layers)}
        locs = {i: loc for i, loc in locs.items() if loc is not None}
        if locs and fast_path_available(model, list(locs.values())):
            found[site] = locs
    return found


@pytest.mark.parametrize("family", FAMILIES)
def test_every_value_equals_the_traced_one_bit_for_bit(family: str) -> None:
    model = _model(family)
    encoding, _ = encode_prompts(model, PROMPTS)
    sites = _sites(model)
    assert {"layers_input", "layers_output", "mlps_output"} <= set(sites)
    layout = model.binding.layout
    if family == "opt":
        assert any(loc.flat for locs in sites.values() for loc in locs.values())
    if family == "xlnet":
        assert layout.layers[0]["layers_output"].seq_first
    if family in ("deepseek_v4", "qwen4_exp_text"):
        assert layout.layers[0]["layers_output"].streams is not None
    if family == "falcon":
        assert layout.has_copies
    compared = 0
    for site, locs in sites.items():
        fast, _ = read_values(model, encoding, {i: Read(loc) for i, loc in locs.items()})
        traced: dict[int, torch.Tensor] = {}
        with torch.no_grad(), model.trace(encoding):
            for i in locs:
                value = model.token_embeddings if site == "token_embeddings" else getattr(model, site)[i]
                traced[i] = value.save()
        for i in locs:
            assert fast[i].shape == traced[i].shape, (site, i)
            assert torch.equal(fast[i], traced[i]), (site, i)
            compared += 1
    assert compared >= 2 * model.num_layers


@pytest.mark.parametrize("family", FAMILIES)
def test_tools_give_the_same_values_on_both_paths(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(family)
    layers = list(range(model.num_layers))
    fast = {
        "activations": get_token_activations(model, PROMPTS, idx=-1),
        "first": get_token_activations(model, PROMPTS, idx=0),
        "sources": last_token_states(model, PROMPTS, layers, "layers_output", False),
    }
    if model.lens_unavailable is None:
        fast["lens"] = logit_lens(model, PROMPTS, positions=[-2, -1])
    monkeypatch.setattr(fastpath, "ENABLED", False)
    slow = {
        "activations": get_token_activations(model, PROMPTS, idx=-1),
        "first": get_token_activations(model, PROMPTS, idx=0),
        "sources": last_token_states(model, PROMPTS, layers, "layers_output", False),
    }
    if model.lens_unavailable is None:
        slow["lens"] = logit_lens(model, PROMPTS, positions=[-2, -1])
    for key, value in fast.items():
        assert torch.equal(value, slow[key]), key


def test_the_forward_stops_after_the_last_value_read() -> None:
    model = _model("llama")
    encoding, _ = encode_prompts(model, PROMPTS)
    root = model._module
    calls: list[int] = []
    handles = [
        layer.register_forward_pre_hook(lambda *_, i=i: calls.append(i))
        for i, layer in enumerate(root.model.layers)
    ]
    try:
        values, output = read_values(model, encoding, {"h": Read(model.binding.locator("layers_output", 0))})
    finally:
        for handle in handles:
            handle.remove()
    assert calls == [0] and output is None
    assert values["h"].shape == (len(PROMPTS), encoding["input_ids"].shape[1], model.hidden_size)
    _, output = read_values(
        model, encoding, {"h": Read(model.binding.locator("layers_output", 0))}, keep_output=True
    )
    assert output.logits.shape[:2] == encoding["input_ids"].shape


def test_pick_keeps_only_what_is_asked() -> None:
    model = _model("gpt2")
    encoding, _ = encode_prompts(model, PROMPTS)
    loc = model.binding.locator("layers_output", 1)
    whole, _ = read_values(model, encoding, {"h": Read(loc)})
    last, _ = read_values(model, encoding, {"h": Read(loc, lambda h: h[:, -1])})
    assert torch.equal(last["h"], whole["h"][:, -1])


def test_text_encoding_is_what_the_trace_receives() -> None:
    model = _model("gpt2")
    encoding = text_encoding(model, PROMPTS)
    seen: list[dict[str, torch.Tensor]] = []
    handle = model._module.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(dict(kwargs)), with_kwargs=True
    )
    try:
        with torch.no_grad(), model.trace(PROMPTS):
            model.layers_output[0].save()
    finally:
        handle.remove()
    assert torch.equal(seen[0]["input_ids"], encoding["input_ids"])
    assert torch.equal(seen[0]["attention_mask"], encoding["attention_mask"])


def test_when_the_fast_path_is_refused() -> None:
    model = _model("llama")
    binding = model.binding
    residual = binding.locator("layers_output", 0)
    assert fast_path_available(model, [residual])
    assert not fast_path_available(model, [residual], remote="local")
    queries = binding.locator("queries", 0)
    assert queries is not None and queries.op  # found inside the attention's source: needs nnsight
    assert not fast_path_available(model, [residual, queries])
    inside: dict[str, bool] = {}
    with torch.no_grad(), model.trace(PROMPTS):
        inside["ok"] = fast_path_available(model, [residual])
    assert inside == {"ok": False}


def test_stored_edits_send_reads_through_nnsight() -> None:
    model = StandardizedTransformer(tiny_model_path("gpt2"))
    before = get_token_activations(model, PROMPTS, layers=[0, 1])
    with model.edit(inplace=True):
        model.layers_output[0] = model.layers_output[0] * 0 + 1.0
    assert not fast_path_available(model, [model.binding.locator("layers_output", 0)])
    after = get_token_activations(model, PROMPTS, layers=[0, 1])
    assert torch.equal(after[0], torch.ones_like(after[0]))  # the edit is replayed, not bypassed
    assert not torch.equal(after[1], before[1])
    model.clear_edits()
    assert fast_path_available(model, [model.binding.locator("layers_output", 0)])


def test_text_as_encoding_leaves_other_inputs_alone() -> None:
    from uniterp._inputs import text_as_encoding

    model = _model("gpt2")
    ids = torch.tensor([[1, 2, 3]])
    assert text_as_encoding(model, (ids,), {}) == (ids,)
    assert text_as_encoding(model, ("Hello",), {"remote": "local"}) == ("Hello",)
    # a keyword that could be a preprocessing option goes nnsight's way
    assert text_as_encoding(model, ("Hello",), {"max_length": 4}) == ("Hello",)
    assert text_as_encoding(model, (), {}) == ()
    (encoding,) = text_as_encoding(model, (PROMPTS,), {"use_cache": False})
    assert encoding["input_ids"].shape[0] == len(PROMPTS)
    (single,) = text_as_encoding(model, ("Hello",), {})
    assert single["input_ids"].shape[0] == 1 and bool(single["attention_mask"].all())
