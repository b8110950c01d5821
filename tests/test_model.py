"""The standardized model on every tiny family: exact against HF, writable, padding-invariant."""

from __future__ import annotations

import pytest
import torch

from uniterp import StandardizedTransformer
from uniterp._layout import LAYER_SITES

from conftest import PROMPTS, load_tiny
from reference import NATIVE, encode, first_tensor, hf_forward, hidden_arg


def _read_all(model: StandardizedTransformer, prompts: list[str]) -> dict[str, list[torch.Tensor]]:
    names = LAYER_SITES
    values: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    extra: dict[str, torch.Tensor] = {}
    with torch.no_grad(), model.trace(prompts):
        extra["emb"] = model.token_embeddings.save()
        for i in range(model.num_layers):
            for name in names:
                values[name].append(getattr(model, name)[i].save())
        extra["logits"] = model.logits.save()
        extra["probs"] = model.next_token_probs.save()
    values["token_embeddings"] = [extra["emb"]]
    values["logits"] = [extra["logits"]]
    values["next_token_probs"] = [extra["probs"]]
    return values


def test_every_value_equals_native_module(model: StandardizedTransformer, family: str) -> None:
    stack, attn, attn_out, mlp_in, mlp_out = NATIVE[family]
    captured: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("lin", "lout", "ain", "aout", "min", "mout", "emb")
    }

    def grab(key, pick):
        def hook(_m, args, kwargs, out):
            captured[key].append(pick(args, kwargs, out).detach().clone())

        return hook

    def grab_layer(_m, args, kwargs, out):
        captured["lin"].append(hidden_arg(args, kwargs).clone())
        captured["lout"].append(first_tensor(out).clone())

    spec = [(model.spec.embed_tokens, grab("emb", lambda a, k, o: o))]
    for i in range(model.num_layers):
        base = f"{stack}.{i}"
        spec.append((base, grab_layer))
        spec.append((f"{base}.{attn}", grab("ain", lambda a, k, o: hidden_arg(a, k))))
        spec.append((f"{base}.{attn_out}", grab("aout", lambda a, k, o: first_tensor(o))))
        spec.append((f"{base}.{mlp_in}", grab("min", lambda a, k, o: hidden_arg(a, k))))
        spec.append((f"{base}.{mlp_out}", grab("mout", lambda a, k, o: first_tensor(o))))
    reference = hf_forward(model, PROMPTS, spec)
    ours = _read_all(model, PROMPTS)
    batch, seq = ours["layers_output"][0].shape[:2]
    pairs = {
        "layers_input": "lin",
        "layers_output": "lout",
        "attentions_input": "ain",
        "attentions_output": "aout",
        "mlps_input": "min",
        "mlps_output": "mout",
        "token_embeddings": "emb",
    }
    for name, key in pairs.items():
        assert len(ours[name]) == len(captured[key]), name
        for i, (a, b) in enumerate(zip(ours[name], captured[key])):
            b = b.reshape(batch, seq, -1)  # OPT's MLP works on flattened tokens
            assert a.shape == b.shape, f"{name}[{i}] shape {a.shape} != {b.shape}"
            assert torch.equal(a, b), f"{family}: {name}[{i}] differs by {(a - b).abs().max()}"
    assert torch.equal(ours["logits"][0], reference.logits)
    expected_probs = reference.logits[:, -1].float().softmax(-1)
    torch.testing.assert_close(ours["next_token_probs"][0], expected_probs, rtol=0, atol=0)


def test_layers_match_hf_hidden_states(model: StandardizedTransformer) -> None:
    reference = hf_forward(model, PROMPTS)
    model._module.config.output_hidden_states = False
    with torch.no_grad():
        states = model._module(**encode(model, PROMPTS), output_hidden_states=True).hidden_states
    ours = _read_all(model, PROMPTS)
    n = model.num_layers
    assert len(states) == n + 1
    for i in range(n):
        assert torch.equal(ours["layers_input"][i], states[i])
    for i in range(n - 1):
        assert torch.equal(ours["layers_output"][i], states[i + 1])
    assert torch.equal(ours["logits"][0], reference.logits)


def test_check_passes(model: StandardizedTransformer) -> None:
    result = model.check()
    assert result.passed, str(result)
    names = [item.name for item in result.items]
    assert any("logits == HF" in n for n in names)
    assert sum(item.status == "passed" for item in result.items) >= 10


def test_left_padding_invariance(model: StandardizedTransformer) -> None:
    alone_prompt = "hello world"
    batch = [
        "The Eiffel Tower is in the city of Paris and",
        alone_prompt,
        "one two three four five six seven eight",
    ]
    with torch.no_grad():
        with model.trace([alone_prompt]):
            alone = model.next_token_probs.save()
        with model.trace(batch):
            padded = model.next_token_probs.save()
    torch.testing.assert_close(padded[1], alone[0], rtol=1e-4, atol=1e-5)


def test_steer_equals_manual_addition(model: StandardizedTransformer) -> None:
    torch.manual_seed(1)
    vector = torch.randn(model.hidden_size)
    layers = [0, model.num_layers - 1]
    stack = NATIVE[model.model_type][0]

    def add(_m, _a, _k, out):
        if isinstance(out, tuple):
            return (out[0] + 2.0 * vector, *out[1:])
        return out + 2.0 * vector

    reference = hf_forward(model, PROMPTS, {f"{stack}.{i}": add for i in layers})
    with torch.no_grad(), model.trace(PROMPTS):
        model.steer(layers, vector, factor=2.0)
        logits = model.logits.save()
    torch.testing.assert_close(logits, reference.logits, rtol=1e-5, atol=1e-5)


def test_steer_positions_and_rows(model: StandardizedTransformer) -> None:
    vector = torch.ones(model.hidden_size)
    with torch.no_grad(), model.trace(PROMPTS):
        before = model.layers_output[1].clone().save()
        model.steer(1, vector, factor=3.0, token_positions=[-1], batch_index=[0, 2])
        after = model.layers_output[1].save()
    diff = after - before
    assert torch.allclose(diff[[0, 2], -1], torch.full_like(diff[[0, 2], -1], 3.0))
    assert diff[1].abs().max() == 0
    assert diff[:, :-1].abs().max() == 0


def test_skip_layer_passes_residual_through(model: StandardizedTransformer) -> None:
    layer = 1
    stack = NATIVE[model.model_type][0]

    def identity(_m, args, kwargs, out):
        h = hidden_arg(args, kwargs)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    reference = hf_forward(model, PROMPTS, {f"{stack}.{layer}": identity})
    with torch.no_grad(), model.trace(PROMPTS):
        model.skip_layer(layer)
        out = model.layers_output[layer].save()
        inp_next = model.layers_input[layer + 1].save()
        logits = model.logits.save()
    assert torch.equal(out, inp_next)
    torch.testing.assert_close(logits, reference.logits, rtol=1e-5, atol=1e-5)


def test_skip_layers_range(model: StandardizedTransformer) -> None:
    with torch.no_grad(), model.trace(PROMPTS):
        start = model.layers_input[0].save()
        model.skip_layers(0, model.num_layers - 2)
        last_in = model.layers_input[model.num_layers - 1].save()
    assert torch.equal(start, last_in)


@pytest.mark.parametrize("site", ["attentions_output", "mlps_output", "layers_output"])
def test_write_reaches_output(model: StandardizedTransformer, site: str) -> None:
    stack, _attn, attn_out, _mlp_in, mlp_out = NATIVE[model.model_type]
    rel = {"attentions_output": attn_out, "mlps_output": mlp_out, "layers_output": ""}[site]
    path = f"{stack}.0.{rel}" if rel else f"{stack}.0"

    def zero(_m, _a, _k, out):
        if isinstance(out, tuple):
            return (torch.zeros_like(out[0]), *out[1:])
        return torch.zeros_like(out)

    reference = hf_forward(model, PROMPTS, {path: zero})
    with torch.no_grad(), model.trace(PROMPTS):
        value = getattr(model, site)[0]
        getattr(model, site)[0] = torch.zeros_like(value)
        logits = model.logits.save()
    torch.testing.assert_close(logits, reference.logits, rtol=1e-5, atol=1e-5)
    plain = hf_forward(model, PROMPTS)
    assert not torch.allclose(logits, plain.logits)


def test_project_on_vocab_of_last_layer_is_logits(model: StandardizedTransformer) -> None:
    with torch.no_grad(), model.trace(PROMPTS):
        lens = model.project_on_vocab(model.layers_output[-1]).save()
        logits = model.logits.save()
    torch.testing.assert_close(lens, logits, rtol=1e-5, atol=1e-5)


def test_project_on_vocab_outside_trace(model: StandardizedTransformer) -> None:
    model.dispatch()
    hidden = torch.randn(2, 3, model.hidden_size)
    logits = model.project_on_vocab(hidden)
    assert logits.shape == (2, 3, model.vocab_size)


def test_metadata(model: StandardizedTransformer, family: str) -> None:
    config = model._module.config
    assert model.num_layers == config.num_hidden_layers == 3
    assert model.hidden_size == 64
    assert model.num_heads == 4
    assert model.head_dim * model.num_heads == 64 or model.head_dim == 16
    assert model.num_kv_heads in (1, 2, 4)
    assert model.vocab_size == 512
    assert model.model_type == family
    text = repr(model)
    assert "embed_tokens" in text and "layers[0..2]" in text and "lm_head" in text


def test_standard_tree(model: StandardizedTransformer) -> None:
    assert len(model.layers) == model.num_layers
    assert model.layers[-1] is model.layers[model.num_layers - 1]
    assert model.embed_tokens is not None
    assert model.lm_head is not None
    assert model.layers[0].self_attn is not None
    if model.spec.mlp is not None:
        assert model.layers[0].mlp is not None
    if model.spec.final_norm is not None:
        assert model.ln_final is not None


def test_input_ids_and_attention_mask(model: StandardizedTransformer) -> None:
    enc = encode(model, PROMPTS)
    with torch.no_grad(), model.trace(PROMPTS):
        ids = model.input_ids.save()
        mask = model.attention_mask.save()
    assert torch.equal(ids, enc["input_ids"])
    assert torch.equal(mask, enc["attention_mask"])


def test_forward_order_reading_in_one_trace() -> None:
    model = load_tiny("llama")
    with torch.no_grad(), model.trace(PROMPTS):
        a = model.layers_output[0].save()
        b = model.layers_output[2].save()
    assert a.shape == b.shape == (3, a.shape[1], 64)


@pytest.mark.parametrize("family", ["gpt2", "llama", "falcon"])
def test_remote_local_trace_matches_local(family: str) -> None:
    model = load_tiny(family)
    with torch.no_grad():
        with model.trace(PROMPTS):
            local = model.layers_output[1].save()
            local_logits = model.logits.save()
        with model.trace(PROMPTS, remote="local"):
            remote = model.layers_output[1].save()
            model.layers_output[2] = model.layers_output[2] * 1.0
            remote_logits = model.logits.save()
    assert torch.equal(local, remote)
    assert torch.equal(local_logits, remote_logits)
