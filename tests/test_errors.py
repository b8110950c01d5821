"""Bad input raises uniterp's errors with messages that say what was expected."""

from __future__ import annotations

import pytest
import torch

import uniterp
from uniterp import (
    ArchitectureError,
    ArchitectureSpec,
    InputError,
    LayerIndexError,
    ShapeError,
    StandardizedTransformer,
    UniterpError,
)
from uniterp.testing import build_tiny_tokenizer, tiny_model_path

from conftest import PROMPTS, load_tiny

FAMILIES = ["gpt2", "llama", "opt", "bloom", "falcon", "gemma2"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("index", [3, 7, -4, 100])
def test_layer_index_out_of_range(family: str, index: int) -> None:
    model = load_tiny(family)
    with pytest.raises(LayerIndexError, match=r"valid: -3 to 2") as info:
        with model.trace(PROMPTS):
            model.layers_output[index].save()
    assert isinstance(info.value, IndexError) and isinstance(info.value, UniterpError)
    with pytest.raises(LayerIndexError, match=r"out of range"):
        model.layers[index]


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_index_wrong_type(family: str) -> None:
    model = load_tiny(family)
    with pytest.raises(LayerIndexError, match="must be an int"):
        with model.trace(PROMPTS):
            model.mlps_output["1"].save()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", [(63,), (65,), (2, 32), ()])
def test_steering_vector_of_wrong_size(family: str, shape: tuple[int, ...]) -> None:
    model = load_tiny(family)
    with pytest.raises(ShapeError, match="hidden_size=64"):
        with model.trace(PROMPTS):
            model.steer(1, torch.zeros(shape))


@pytest.mark.parametrize("family", FAMILIES)
def test_steer_bad_layer(family: str) -> None:
    model = load_tiny(family)
    with pytest.raises(LayerIndexError):
        with model.trace(PROMPTS):
            model.steer([0, 9], torch.zeros(64))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompts", [[], "", ["hello", ""]])
def test_empty_prompts(family: str, prompts: object) -> None:
    model = load_tiny(family)
    with pytest.raises(InputError, match="empty"):
        with model.trace(prompts):
            pass


def test_skip_layers_reversed() -> None:
    model = load_tiny("llama")
    with pytest.raises(InputError, match="comes before"):
        with model.trace(PROMPTS):
            model.skip_layers(2, 1)


class _WeirdConfig(__import__("transformers").PretrainedConfig):
    model_type = "uniterp_weird"

    def __init__(self, vocab_size: int = 512, hidden_size: int = 16, num_hidden_layers: int = 2, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        super().__init__(**kwargs)


def _weird_model() -> torch.nn.Module:
    from transformers import GenerationMixin, PreTrainedModel
    from transformers.modeling_outputs import CausalLMOutput

    class WeirdForCausalLM(PreTrainedModel, GenerationMixin):
        config_class = _WeirdConfig

        def __init__(self, config: _WeirdConfig) -> None:
            super().__init__(config)
            self.emb = torch.nn.Embedding(config.vocab_size, config.hidden_size)
            # blocks in a Sequential, not a ModuleList: nothing to discover
            self.blocks = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(2)])
            self.head = torch.nn.Linear(16, config.vocab_size)
            self.post_init()

        def get_input_embeddings(self):
            return self.emb

        def get_output_embeddings(self):
            return self.head

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            return CausalLMOutput(logits=self.head(self.blocks(self.emb(input_ids))))

    return WeirdForCausalLM(_WeirdConfig())


def test_unknown_architecture_without_spec() -> None:
    with pytest.raises(ArchitectureError) as info:
        StandardizedTransformer(_weird_model(), tokenizer=build_tiny_tokenizer())
    text = str(info.value)
    assert "uniterp_weird" in text and "'layers'" in text and "spec=" in text
    assert info.value.model_type == "uniterp_weird"


def test_wrong_spec_names_the_paths_tried() -> None:
    path = tiny_model_path("llama")
    bad = uniterp.get_spec("llama").with_(mlp="feed_forward")
    with pytest.raises(ArchitectureError, match=r"'model\.layers\.0\.feed_forward'") as info:
        StandardizedTransformer(path, spec=bad)
    assert info.value.name == "mlps_input[0]"
    bad_stack = ArchitectureSpec(
        embed_tokens="model.embed_tokens", layers="model.blocks", final_norm="model.norm"
    )
    with pytest.raises(ArchitectureError, match="model.blocks"):
        StandardizedTransformer(path, spec=bad_stack)


def test_custom_spec_is_used() -> None:
    path = tiny_model_path("gpt2")
    spec = ArchitectureSpec(
        embed_tokens="transformer.wte",
        layers="transformer.h",
        final_norm="transformer.ln_f",
        attention="attn",
    )
    model = StandardizedTransformer(path, spec=spec)
    assert model.spec is spec
    assert model.check().passed


def test_discovery_for_an_unregistered_type(monkeypatch: pytest.MonkeyPatch) -> None:
    from uniterp import _families

    monkeypatch.delitem(_families._SPECS, "llama")
    model = StandardizedTransformer(tiny_model_path("llama"))
    assert model.spec.layers == "model.layers"
    assert model.spec.final_norm == "model.norm"
    assert model.spec.attention == ("self_attn",) and model.spec.mlp == ("mlp",)
    assert model.spec.block == "unknown"
    with torch.no_grad(), model.trace(PROMPTS):
        lens = model.project_on_vocab(model.layers_output[-1]).save()
        logits = model.logits.save()
    torch.testing.assert_close(lens, logits)


def test_register_spec_refuses_duplicates() -> None:
    with pytest.raises(InputError, match="registered already"):
        uniterp.register_spec("llama", uniterp.get_spec("llama"))


@pytest.mark.parametrize(
    "name", ["layers_output", "mlps_input", "token_embeddings", "logits", "next_token_probs"]
)
def test_reading_outside_a_trace(name: str) -> None:
    model = load_tiny("gpt2")
    with pytest.raises(uniterp.OutsideTraceError, match="inside `with model.trace"):
        value = getattr(model, name)
        if name.endswith("s_output") or name.endswith("s_input"):
            value[0]
