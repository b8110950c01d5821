"""A representative subset of the support matrix, run in CI (the full run is `make coverage`).

For every listed ``model_type`` the tiny model either loads and is exact — every
``layers_output[i]`` equals HF's own ``output_hidden_states`` and the logits equal
a plain HF forward — or it is refused at load with uniterp's error and a reason.
"""

from __future__ import annotations

import pytest
import torch

from uniterp import ArchitectureError, StandardizedTransformer
from uniterp.testing import tiny_model_path

from reference import encode

# model_type -> what uniterp must do with it (see docs/support-matrix.md for every type)
EXACT = [
    # Llama-style, sandwich norms, MoE blocks, MLA attention
    "afmoe",
    "apertus",
    "arcee",
    "cohere2",
    "cwm",
    "diffllama",
    "doge",
    "ernie4_5_moe",
    "exaone4",
    "glm4",
    "helium",
    "olmo3",
    "olmoe",
    "phimoe",
    "smollm3",
    "vaultgemma",
    "minimax_m2",
    "granitemoe",
    "jetmoe",
    "gpt_oss",
    "persimmon",
    "deepseek_v3",
    "llama4_text",
    "gemma4_text",
    # GPT-2 style and parallel blocks
    "gpt_neo",
    "openai-gpt",
    "ctrl",
    "mpt",
    "gpt_neox_japanese",
    # encoder-style models used as decoders; seq2seq decoders
    "bert",
    "roberta",
    "roberta-prelayernorm",
    "electra",
    "modernbert-decoder",
    "bart",
    "marian",
    "pegasus",
    "mbart",
    "whisper",
    "xglm",
    "biogpt",
    "xlnet",
    # state-space models and hybrid stacks
    "mamba",
    "mamba2",
    "falcon_mamba",
    "rwkv",
    "xlstm",
    "nemotron_h",
    "lfm2",
    "jamba",
    "bamba",
    "qwen3_next",
    "zamba2",
    "falcon_h1",
    "granitemoehybrid",
    "recurrent_gemma",
    "kimi_linear",
    # text backbones of vision-language models
    "gemma3",
    "fuyu",
    "got_ocr2",
    "git",
]


def _reference(
    model: StandardizedTransformer, prompts: list[str]
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    with torch.no_grad():
        out = model._module(**encode(model, prompts), output_hidden_states=True)
    return out.logits, out.hidden_states


@pytest.mark.parametrize("model_type", EXACT)
def test_exact(model_type: str) -> None:
    model = StandardizedTransformer(tiny_model_path(model_type))
    result = model.check()
    assert result.passed, str(result)
    prompts = ["The Eiffel Tower is in the city of", "hello world"]
    saved: list[torch.Tensor] = []
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad(), model.trace(prompts):
        for i in range(model.num_layers):
            saved.append(model.layers_output[i].save())
        out["logits"] = model.logits.save()
    logits, hidden_states = _reference(model, prompts)
    assert torch.equal(out["logits"], logits)
    if hidden_states is not None and len(hidden_states) == model.num_layers + 1:
        # HF records either the input of every layer plus the final state (most
        # families) or the output of every layer (Mamba): layer i's output is
        # entry i + 1 or entry i. The last entry is often after the final norm.
        for i in range(model.num_layers - 1):
            assert torch.equal(saved[i], hidden_states[i + 1]) or torch.equal(saved[i], hidden_states[i]), (
                f"{model_type}: layers_output[{i}] is not in HF's hidden_states"
            )
    report = model.support()
    assert report["layers_output"].everywhere and report["logits"].available


REFUSED: dict[str, str] = {
    # the decoder runs a main stream and n-gram predicting streams side by side along the sequence
    "prophetnet": "no argument of shape",
    # a decoder layer runs several times in one forward (looped / recurrent-depth models)
    "hrm_text": "ran 6 times",
    "dory": "ran 2 times",
    # each layer is split across parallel ModuleLists (attentions, layer_norm1, ffns, layer_norm2)
    "xlm": "split across parallel ModuleLists",
    # the global transformer runs on patches (one more position than tokens)
    "blt": r"no argument of shape \(batch, seq, hidden\) = \(2, 13",
    # the layers also see the prompt positions CPM-Ant prepends (4 + 13), the logits do not
    "cpmant": r"could not be checked: .*\(17\) must match the size of tensor b \(13\)",
    # hidden states are (seq, batch, hidden): the lens of the last layer does not line up with the logits
}


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_refused_with_a_reason(model_type: str) -> None:
    with pytest.raises(ArchitectureError, match=REFUSED[model_type]):
        StandardizedTransformer(tiny_model_path(model_type))


def test_seq_first_model_shows_batch_first_values_and_writes_reach_the_model() -> None:
    """XLNet keeps (seq, batch, hidden) natively; values are (batch, seq, hidden) views of it."""
    from typing import Any

    from conftest import PROMPTS, model_and_reference
    from reference import first_tensor, hooks

    model, hf = model_and_reference("xlnet")
    seen: dict[str, torch.Tensor] = {}

    def grab(_m: Any, _a: Any, _k: Any, out: Any) -> None:
        seen["layer1"] = first_tensor(out).detach().clone()

    def zero_last_position(_m: Any, _a: Any, _k: Any, out: Any) -> Any:
        hidden = first_tensor(out).clone()
        hidden[-1] = 0.0  # native layout: (seq, batch, hidden)
        return (hidden, *out[1:])

    out: dict[str, torch.Tensor] = {}
    with torch.no_grad(), model.trace(PROMPTS):
        out["embeddings"] = model.token_embeddings.save()
        out["layer1"] = model.layers_output[1].save()
    with torch.no_grad(), model.trace(PROMPTS):
        h = model.layers_output[0].clone()
        h[:, -1] = 0.0
        model.layers_output[0] = h
        out["zeroed"] = model.logits.save()
    with torch.no_grad(), hooks(hf, {"transformer.layer.1": grab}):
        hf(**encode(model, PROMPTS))
    with torch.no_grad(), hooks(hf, {"transformer.layer.0": zero_last_position}):
        zeroed = hf(**encode(model, PROMPTS)).logits
    batch, seq = len(PROMPTS), out["layer1"].shape[1]
    assert out["layer1"].shape == (batch, seq, model.hidden_size)
    assert out["embeddings"].shape == (batch, seq, model.hidden_size)
    assert torch.equal(out["layer1"], seen["layer1"].transpose(0, 1))
    torch.testing.assert_close(out["zeroed"], zeroed)


@pytest.mark.parametrize("model_type", EXACT)
def test_values_inside_the_blocks_where_claimed(model_type: str) -> None:
    """Every internal value support() claims reads with its documented rank; check(internals=True) passes."""
    from uniterp._internals import INTERNAL_SITES

    model = StandardizedTransformer(tiny_model_path(model_type))
    report = model.support()
    rank = {"mlp_neurons": 3, "head_outputs": 4, "router_logits": 3, "expert_indices": 3, "expert_weights": 3}
    reads: list[tuple[str, int]] = []
    for site in INTERNAL_SITES:
        claimed = report[site].layers
        reads += [(site, layer) for layer in {claimed[0], claimed[-1]}] if claimed else []
        assert all(report[site].unavailable[i] for i in report[site].unavailable), (
            f"{site}: a refusal without reason"
        )
    states = report["mixer_states"].layers  # the mixer's own shape: batch first, at least 2 dims
    reads += [("mixer_states", layer) for layer in {states[0], states[-1]}] if states else []
    for site, layer in reads:  # one trace per value: each read is independent of the others
        with torch.no_grad(), model.trace(["The Eiffel Tower is in the city of", "hello world"]):
            value = getattr(model, site)[layer].save()
        dims_ok = value.dim() >= 2 if site == "mixer_states" else value.dim() == rank.get(site, 4)
        assert dims_ok and value.shape[0] == 2, f"{site}[{layer}]: {tuple(value.shape)}"
    result = model.check(internals=True)
    assert result.passed, str(result)
