"""The logit lens against a hand-written projection of plain HF hidden states."""

from __future__ import annotations

import pytest
import torch

from uniterp import InputError, LayerIndexError, StandardizedTransformer
from uniterp.lens import TopTokens, logit_lens

from conftest import load_tiny
from reference import NATIVE, first_tensor, hf_forward

FAMILIES = ["gpt2", "llama", "gemma2", "falcon", "opt", "bloom", "qwen3_moe", "phi"]

# The final norm of each family, read off the HF modeling files.
FINAL_NORM = {
    "gpt2": "transformer.ln_f",
    "llama": "model.norm",
    "gemma2": "model.norm",
    "falcon": "transformer.ln_f",
    "opt": "model.decoder.final_layer_norm",
    "bloom": "transformer.ln_f",
    "qwen3_moe": "model.norm",
    "phi": "model.final_layernorm",
}

PROMPTS = ["The Eiffel Tower is in the city of", "hello world", "one two three four five six seven eight"]
TOL = {"atol": 1e-5, "rtol": 1e-4}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(family: str) -> StandardizedTransformer:
    return load_tiny(family)


@torch.no_grad()
def reference_lens(model: StandardizedTransformer, family: str, prompt: str) -> torch.Tensor:
    """``(n_layers, seq, vocab)`` probabilities of one unpadded prompt: HF hooks + norm + head + softcap."""
    stack = NATIVE[family][0]
    captured: list[torch.Tensor] = []

    def grab(_m, _args, _kwargs, out):
        captured.append(first_tensor(out).detach().clone())

    spec = [(f"{stack}.{i}", grab) for i in range(model.num_layers)]
    hf_forward(model, [prompt], spec)
    root = model._module
    norm = root.get_submodule(FINAL_NORM[family])
    head = root.get_output_embeddings()
    hidden = torch.cat(captured, dim=0)  # (n_layers, seq, hidden)
    logits = head(norm(hidden))
    cap = getattr(root.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits.float().softmax(dim=-1)


def test_lens_equals_hand_projection(model: StandardizedTransformer, family: str) -> None:
    positions = [0, 1, -2, -1]
    lens = logit_lens(model, PROMPTS, positions=positions)
    assert lens.shape == (len(PROMPTS), model.num_layers, len(positions), model.vocab_size)
    assert lens.device.type == "cpu" and lens.dtype == torch.float32 and not lens.requires_grad
    for i, prompt in enumerate(PROMPTS):
        ref = reference_lens(model, family, prompt)
        for j, position in enumerate(positions):
            torch.testing.assert_close(lens[i, :, j], ref[:, position], **TOL)


def test_default_is_last_position_of_every_layer(model: StandardizedTransformer, family: str) -> None:
    lens = logit_lens(model, PROMPTS)
    assert lens.shape == (len(PROMPTS), model.num_layers, model.vocab_size)
    for i, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(lens[i], reference_lens(model, family, prompt)[:, -1], **TOL)
    torch.testing.assert_close(lens.sum(-1), torch.ones(lens.shape[:2]))


def test_last_layer_equals_next_token_probs(model: StandardizedTransformer) -> None:
    lens = logit_lens(model, PROMPTS, layers=[-1])
    with torch.no_grad(), model.trace(PROMPTS):
        probs = model.next_token_probs.save()
    # same computation; only the matrix shapes differ (float rounding of the GEMM)
    torch.testing.assert_close(lens[:, 0], probs, atol=1e-6, rtol=1e-5)


def test_prompt_alone_equals_its_row_in_a_padded_batch(model: StandardizedTransformer) -> None:
    short = "hello world"
    batch = ["one two three four five six seven eight nine ten", short, "The capital of France is Paris."]
    alone = logit_lens(model, short, positions=[0, -1])
    padded = logit_lens(model, batch, positions=[0, -1])
    torch.testing.assert_close(padded[1:2], alone, atol=1e-5, rtol=1e-4)


def test_options_agree_with_full_output(model: StandardizedTransformer) -> None:
    full = logit_lens(model, PROMPTS)
    top = logit_lens(model, PROMPTS, top_k=5)
    assert isinstance(top, TopTokens)
    assert top.token_ids.shape == top.probs.shape == (len(PROMPTS), model.num_layers, 5)
    torch.testing.assert_close(top.probs, full.topk(5, dim=-1).values)
    torch.testing.assert_close(full.gather(-1, top.token_ids), top.probs)

    ids = [3, 17, 200]
    shared = logit_lens(model, PROMPTS, targets=ids)
    torch.testing.assert_close(shared, full[..., ids])
    per_prompt = torch.tensor([[1, 2], [3, 4], [5, 6]])
    own = logit_lens(model, PROMPTS, targets=per_prompt)
    for i in range(len(PROMPTS)):
        torch.testing.assert_close(own[i], full[i][:, per_prompt[i]])

    picked = logit_lens(model, PROMPTS, layers=[2, 0, -1])
    torch.testing.assert_close(picked, full[:, [2, 0, model.num_layers - 1]])
    chunked = logit_lens(model, PROMPTS, batch_size=2)
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=1e-5)


def test_inverse_lens(model: StandardizedTransformer, family: str) -> None:
    lens, inverse = logit_lens(model, PROMPTS[:1], return_inv_logits=True)
    ref = reference_lens(model, family, PROMPTS[0])[:, -1]
    # softmax(-logits) == softmax(-log p): log p differs from the logits by a constant per row
    torch.testing.assert_close(inverse[0], (-ref.double().log()).softmax(-1).float(), atol=1e-5, rtol=1e-3)
    torch.testing.assert_close(lens[0], ref, **TOL)
    top, inv_top = logit_lens(model, PROMPTS[:1], top_k=3, return_inv_logits=True)
    torch.testing.assert_close(inv_top.probs, inverse.topk(3, dim=-1).values)
    torch.testing.assert_close(top.probs, lens.topk(3, dim=-1).values)


@pytest.mark.parametrize("family_name", ["gpt2", "llama"])
def test_remote_local_matches_local(family_name: str, hide_uniterp_source: None) -> None:
    model = load_tiny(family_name)
    local = logit_lens(model, PROMPTS, positions=[-2, -1])
    remote = logit_lens(model, PROMPTS, positions=[-2, -1], remote="local")
    torch.testing.assert_close(remote, local, atol=0, rtol=0)
    targets = logit_lens(model, PROMPTS, targets=[1, 2], remote="local")
    torch.testing.assert_close(targets, local[:, :, 1][..., [1, 2]])


def test_bad_input_raises_uniterp_errors() -> None:
    model = load_tiny("gpt2")
    with pytest.raises(InputError, match="empty"):
        logit_lens(model, [])
    with pytest.raises(InputError, match="empty string"):
        logit_lens(model, ["hello", ""])
    with pytest.raises(InputError, match="string"):
        logit_lens(model, [1, 2])
    with pytest.raises(LayerIndexError, match="out of range.*3 layers"):
        logit_lens(model, "hello", layers=[0, 3])
    with pytest.raises(LayerIndexError, match="must be an int"):
        logit_lens(model, "hello", layers=["0"])
    with pytest.raises(InputError, match="empty"):
        logit_lens(model, "hello", layers=[])
    with pytest.raises(InputError, match="position 40 is outside prompt 0"):
        logit_lens(model, "hello", positions=[40])
    with pytest.raises(InputError, match="top_k must be an int in"):
        logit_lens(model, "hello", top_k=0)
    with pytest.raises(InputError, match="not both"):
        logit_lens(model, "hello", top_k=2, targets=[1])
    with pytest.raises(InputError, match=r"target ids must be in \[0, 512\)"):
        logit_lens(model, "hello", targets=[512])
    with pytest.raises(InputError, match="shape"):
        logit_lens(model, ["a", "b"], targets=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(InputError, match="integer"):
        logit_lens(model, "hello", targets=[1.5])
