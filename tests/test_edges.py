"""Edge attribution patching (EAP, EAP-IG) against scores computed by hand on plain HF models."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from uniterp import InputError, StandardizedTransformer, UnavailableError
from uniterp.edges import edge_attribution_patching
from uniterp.metrics import logit_diff

from conftest import load_tiny
from grad_reference import hf_model
from reference import encode

CLEAN, CORRUPT = ["The capital of France is"], ["The capital of Japan is"]
TWO_CLEAN = ["The capital of France is", "The capital of Japan is"]
TWO_CORRUPT = ["The capital of Japan is", "The capital of France is"]

# Read off the HF modeling files: per family, the stack, the final norm, and per layer (relative to
# the block) the attention norm, the MLP norm, and the modules whose outputs the block adds to the stream.
LAYOUT: dict[str, dict[str, Any]] = {
    "llama": {
        "stack": "model.layers",
        "final": "model.norm",
        "norms": ("input_layernorm", "post_attention_layernorm"),
        "writes": ("self_attn", "mlp"),
    },
    "qwen2": {
        "stack": "model.layers",
        "final": "model.norm",
        "norms": ("input_layernorm", "post_attention_layernorm"),
        "writes": ("self_attn", "mlp"),
    },
    "gpt2": {
        "stack": "transformer.h",
        "final": "transformer.ln_f",
        "norms": ("ln_1", "ln_2"),
        "writes": ("attn", "mlp"),
    },
    "gpt_neox": {
        "stack": "gpt_neox.layers",
        "final": "gpt_neox.final_layer_norm",
        "norms": ("input_layernorm", "post_attention_layernorm"),
        "writes": ("attention", "mlp"),
    },
    "gemma2": {
        "stack": "model.layers",
        "final": "model.norm",
        "norms": ("input_layernorm", "pre_feedforward_layernorm"),
        "writes": ("post_attention_layernorm", "post_feedforward_layernorm"),
    },
}


def raw_metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, 5] - logits[:, -1, 7] + 0.5 * logits[:, -2, 11]


def _first(x: Any) -> torch.Tensor:
    return x[0] if isinstance(x, (tuple, list)) else x


def _writes(
    hf: torch.nn.Module, family: str, enc: dict[str, torch.Tensor], n_layers: int
) -> list[torch.Tensor]:
    """[input, attn.0, mlp.0, attn.1, ...]: what each component adds to the stream, by hooks."""
    lay = LAYOUT[family]
    got: dict[str, torch.Tensor] = {}
    handles = [
        hf.get_submodule(f"{lay['stack']}.0").register_forward_pre_hook(
            lambda m, a, k: got.__setitem__("input", (a[0] if a else k["hidden_states"]).detach()),
            with_kwargs=True,
        )
    ]
    for i in range(n_layers):
        for name, rel in zip(("attn", "mlp"), lay["writes"]):
            module = hf.get_submodule(f"{lay['stack']}.{i}.{rel}")
            handles.append(
                module.register_forward_hook(
                    lambda m, a, o, key=f"{name}.{i}": got.__setitem__(key, _first(o).detach())
                )
            )
    with torch.no_grad():
        hf(**enc)
    for h in handles:
        h.remove()
    return [got["input"]] + [got[f"{k}.{i}"] for i in range(n_layers) for k in ("attn", "mlp")]


def _reads(
    hf: torch.nn.Module,
    family: str,
    enc: dict[str, torch.Tensor],
    n_layers: int,
    alphas: list[float] | None,
    start=None,
    end=None,
) -> list[torch.Tensor]:
    """[attn.0, mlp.0, ..., logits]: gradient of the metric w.r.t. each reader's norm input (probe on that norm only)."""
    lay = LAYOUT[family]
    total: list[torch.Tensor] | None = None
    for alpha in alphas or [None]:
        probes: dict[str, torch.Tensor] = {}
        handles: list[Any] = []

        def add(
            path: str, key: str, hooks: list[Any] = handles, store: dict[str, torch.Tensor] = probes
        ) -> None:
            def pre(m: Any, args: Any) -> Any:
                d = torch.zeros_like(args[0], requires_grad=True)
                store[key] = d
                return (args[0] + d, *args[1:])

            hooks.append(hf.get_submodule(path).register_forward_pre_hook(pre))

        for i in range(n_layers):
            add(f"{lay['stack']}.{i}.{lay['norms'][0]}", f"attn.{i}")
            add(f"{lay['stack']}.{i}.{lay['norms'][1]}", f"mlp.{i}")
        add(lay["final"], "logits")
        if alpha is not None:
            point = start + alpha * (end - start)

            def replace(m: Any, args: Any, kwargs: Any, point: torch.Tensor = point) -> Any:
                if args:
                    return ((point, *args[1:]), kwargs)
                return (args, {**kwargs, "hidden_states": point})

            handles.append(
                hf.get_submodule(f"{lay['stack']}.0").register_forward_pre_hook(replace, with_kwargs=True)
            )
        keys = [f"{k}.{i}" for i in range(n_layers) for k in ("attn", "mlp")] + ["logits"]
        with torch.enable_grad():
            value = raw_metric(hf(**enc).logits).sum()
            grads = torch.autograd.grad(value, [probes[k] for k in keys])
        for h in handles:
            h.remove()
        total = list(grads) if total is None else [a + b for a, b in zip(total, grads)]
    return [g / len(alphas or [None]) for g in total]


def _hand_scores(
    family: str, model: Any, clean: list[str], corrupted: list[str], ig_steps: int | None = None
) -> torch.Tensor:
    hf = hf_model(family)
    n = model.num_layers
    factor = getattr(hf.config, "residual_multiplier", 1.0) or 1.0
    src, base = encode(model, clean), encode(model, corrupted)
    deltas = [
        factor * (a - b) if i else a - b
        for i, (a, b) in enumerate(zip(_writes(hf, family, src, n), _writes(hf, family, base, n)))
    ]
    alphas = None if ig_steps is None else [(k + 0.5) / ig_steps for k in range(ig_steps)]
    start = end = None
    if alphas:
        start, end = _writes(hf, family, base, n)[0], _writes(hf, family, src, n)[0]
    reads = _reads(hf, family, base, n, alphas, start, end)
    return torch.stack([torch.stack([(d * g).sum() for g in reads]) for d in deltas])


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma2"])
def test_layer_edges_equal_scores_by_hand(family: str) -> None:
    model = load_tiny(family)
    edges = edge_attribution_patching(model, TWO_CLEAN, TWO_CORRUPT, raw_metric)
    want = _hand_scores(family, model, TWO_CLEAN, TWO_CORRUPT)
    assert edges.upstream[:3] == ["input", "attn.0", "mlp.0"] and edges.downstream[-1] == "logits"
    torch.testing.assert_close(edges.scores, want * edges.valid, atol=1e-5, rtol=1e-4)
    parallel = model.binding.block == "parallel"
    assert bool(edges.valid[1, 1]) is (not parallel)  # attn.0 -> mlp.0 exists on sequential blocks only
    assert not bool(edges.valid[2, 0])  # mlp.0 does not feed attn.0


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_eap_ig_averages_gradients_along_the_input_path(family: str) -> None:
    model = load_tiny(family)
    edges = edge_attribution_patching(model, CLEAN, CORRUPT, raw_metric, ig_steps=4, batch_size=3)
    want = _hand_scores(family, model, CLEAN, CORRUPT, ig_steps=4)
    torch.testing.assert_close(edges.scores, want * edges.valid, atol=1e-5, rtol=1e-4)
    assert edges.method == "eap-ig" and edges.ig_steps == 4


def _head_reads(family: str, model: Any, enc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per head, the gradient w.r.t. the stream as that head's q/k/v projection reads it.

    Each head's slice of q_proj/k_proj/v_proj output is recomputed from ``norm(layer input + d)``
    with its own zero probe ``d``: same values, and ``d``'s gradient flows through that head only.
    """
    hf = hf_model(family)
    cfg = hf.config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    dim = cfg.hidden_size // heads
    probes: dict[str, torch.Tensor] = {}
    handles = []
    for i in range(model.num_layers):
        layer = hf.model.layers[i]
        seen: dict[str, torch.Tensor] = {}
        handles.append(
            layer.register_forward_pre_hook(
                lambda m, a, k, seen=seen: seen.__setitem__("x", a[0] if a else k["hidden_states"]),
                with_kwargs=True,
            )
        )
        for what, count in (("q", heads), ("k", kv), ("v", kv)):
            proj = getattr(layer.self_attn, f"{what}_proj")

            def hook(
                m: Any, a: Any, out: torch.Tensor, i=i, what=what, count=count, seen=seen, layer=layer
            ) -> torch.Tensor:
                new = out.clone()
                for h in range(count):
                    d = torch.zeros_like(seen["x"], requires_grad=True)
                    probes[f"{what}.{i}.{h}"] = d
                    again = torch.nn.functional.linear(layer.input_layernorm(seen["x"] + d), m.weight, m.bias)
                    new[..., h * dim : (h + 1) * dim] = again[..., h * dim : (h + 1) * dim]
                return new

            handles.append(proj.register_forward_hook(hook))
    with torch.enable_grad():
        value = raw_metric(hf(**enc).logits).sum()
        keys = list(probes)
        grads = dict(zip(keys, torch.autograd.grad(value, [probes[k] for k in keys])))
    for h in handles:
        h.remove()
    return grads


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_head_edges_equal_scores_by_hand(family: str) -> None:
    model = load_tiny(family)
    edges = edge_attribution_patching(model, CLEAN, CORRUPT, raw_metric, level="head")
    hf = hf_model(family)
    heads, kv = model.num_heads, model.num_kv_heads
    assert sum(d.startswith("k.0.") for d in edges.downstream) == kv  # grouped heads stay grouped
    dim = model.head_dim

    # upstream: each head's write, z_h @ W_O[h], from the o_proj input captured by hand
    def head_writes(prompts: list[str]) -> dict[str, torch.Tensor]:
        got: dict[str, torch.Tensor] = {}
        handles = [
            hf.model.layers[i].self_attn.o_proj.register_forward_pre_hook(
                lambda m, a, i=i: got.__setitem__(i, a[0].detach())
            )
            for i in range(model.num_layers)
        ]
        with torch.no_grad():
            hf(**encode(model, prompts))
        for h in handles:
            h.remove()
        out = {}
        for i, z in got.items():
            w = hf.model.layers[i].self_attn.o_proj.weight
            for h in range(heads):
                out[f"head.{i}.{h}"] = (
                    z[..., h * dim : (h + 1) * dim] @ w[:, h * dim : (h + 1) * dim].T
                ).detach()
        return out

    src, base = head_writes(CLEAN), head_writes(CORRUPT)
    reads = _head_reads(family, model, encode(model, CORRUPT))
    pairs = [("head.0.1", d) for d in ("q.2.0", "k.2.1", "v.1.0", "q.1.2")]
    pairs += [("head.1.3", d) for d in ("q.2.3", "k.2.0", "v.2.1")]
    for up, down in pairs:
        want = float(((src[up] - base[up]) * reads[down]).sum())
        assert edges.score(up, down) == pytest.approx(want, abs=1e-5, rel=1e-4), (up, down)


def test_results_and_refusals() -> None:
    model = StandardizedTransformer("uniterp-tiny")
    metric = logit_diff(model, " Paris", " Tokyo")
    edges = edge_attribution_patching(model, "The capital of France is", "The capital of Japan is", metric)
    top = edges.top(3)
    assert len(top) == 3 and abs(top[0][2]) >= abs(top[1][2]) >= abs(top[2][2])
    df = edges.to_dataframe()
    assert len(df) == int(edges.valid.sum())
    assert edges.clean_metric > 0 > edges.corrupted_metric
    with pytest.raises(InputError, match="no such edge"):
        edges.score("mlp.3", "attn.1")
    with pytest.raises(InputError, match="level"):
        edge_attribution_patching(model, "a", "b", metric, level="neuron")
    with pytest.raises(UnavailableError, match="level='layer'"):
        edge_attribution_patching(load_tiny("gemma2"), CLEAN, CORRUPT, raw_metric, level="head")
    with pytest.raises(UnavailableError, match="level='layer'"):
        edge_attribution_patching(load_tiny("qwen3"), CLEAN, CORRUPT, raw_metric, level="head")
    with pytest.raises(UnavailableError, match="level='layer'"):
        edge_attribution_patching(load_tiny("phi"), CLEAN, CORRUPT, raw_metric, level="head")
    with pytest.raises(InputError, match="same length"):
        edge_attribution_patching(model, "The capital of France is", "one", metric)


def test_a_padded_batch_adds_up_the_prompts() -> None:
    model = load_tiny("llama")
    clean, corrupted = (
        ["The capital of France is", "hello world"],
        ["The capital of Japan is", "one two three"],
    )
    both = edge_attribution_patching(model, clean, corrupted, raw_metric)
    alone = [edge_attribution_patching(model, [c], [x], raw_metric) for c, x in zip(clean, corrupted)]
    torch.testing.assert_close(both.scores, alone[0].scores + alone[1].scores, atol=1e-5, rtol=1e-4)
