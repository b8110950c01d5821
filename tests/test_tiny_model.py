"""The embedded ``uniterp-tiny`` model: loadable by name offline, and good enough to teach with."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from uniterp import InputError, StandardizedTransformer
from uniterp.lens import logit_lens
from uniterp.patchscope import TargetPrompt, patchscope_lens, repeat_prompt
from uniterp.tiny import TINY_MODEL_NAME, resolve_model_name, tiny_model_dir

# the corpus generator is a script's module (only the training script and these tests need it)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from tiny_corpus import FACTS, fact_prompts, subject_sources  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> StandardizedTransformer:
    return StandardizedTransformer(resolve_model_name(TINY_MODEL_NAME))


def first_token(model: StandardizedTransformer, text: str) -> int:
    return model.tokenizer(text)["input_ids"][0]


def test_resolve_model_name() -> None:
    folder = Path(tiny_model_dir())
    assert resolve_model_name("uniterp-tiny") == str(folder)
    assert resolve_model_name("gpt2") == "gpt2"
    assert resolve_model_name("./some/folder") == "./some/folder"
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))


def test_shipped_files_are_small() -> None:
    size = sum(f.stat().st_size for f in Path(tiny_model_dir()).iterdir())
    assert size <= 20 * 1024 * 1024, f"the embedded model takes {size / 1e6:.1f} MB"


def test_missing_model_folder_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uniterp.tiny

    monkeypatch.setattr(uniterp.tiny, "__file__", str(tmp_path / "tiny.py"))
    with pytest.raises(InputError, match="missing from this installation"):
        tiny_model_dir()


def test_modern_llama_layout(tiny: StandardizedTransformer) -> None:
    config = tiny.text_config
    assert tiny.model_type == "llama"
    assert tiny.num_layers >= 4
    assert tiny.num_kv_heads < tiny.num_heads  # grouped-query attention
    assert config.hidden_act == "silu"  # gated MLP (gate_proj * up_proj)
    layer = tiny.layers[0]._module
    assert type(layer.input_layernorm).__name__.endswith("RMSNorm")
    assert hasattr(layer.mlp, "gate_proj")
    assert getattr(config, "rope_parameters", None) or getattr(config, "rope_theta", None)


def test_training_record() -> None:
    record = json.loads((Path(tiny_model_dir()) / "training.json").read_text())
    assert record["seconds"] <= 20 * 60
    assert record["command"].startswith("python scripts/train_tiny.py")


def test_facts_top1_at_least_95_percent(tiny: StandardizedTransformer) -> None:
    rows = fact_prompts()
    assert len(FACTS) >= 150
    top = logit_lens(tiny, [prompt for prompt, _, _ in rows], layers=[-1], top_k=1)
    hits = [int(top.token_ids[i, 0, 0]) == first_token(tiny, answer) for i, (_, _, answer) in enumerate(rows)]
    accuracy = sum(hits) / len(hits)
    misses = [rows[i][0] for i, hit in enumerate(hits) if not hit][:5]
    assert accuracy >= 0.95, f"fact accuracy {accuracy:.3f}; e.g. {misses}"


def test_paris_emerges_through_the_layers(tiny: StandardizedTransformer) -> None:
    ids, _ = logit_lens(tiny, "The capital of France is", top_k=1)  # (1, n_layers, 1)
    paris = first_token(tiny, " Paris")
    assert int(ids[0, -1, 0]) == paris
    assert int(ids[0, 0, 0]) != paris
    with torch.no_grad(), tiny.trace("The capital of France is"):
        probs = tiny.next_token_probs.save()
    assert int(probs[0].argmax()) == paris


@pytest.mark.parametrize("word", ["Paris", "cat", "Japan", "1135", "Kenya", "river"])
def test_identity_prompt_copies_the_word(tiny: StandardizedTransformer, word: str) -> None:
    prompt = f"cat -> cat\n1135 -> 1135\nhello -> hello\n{word} ->"
    with torch.no_grad(), tiny.trace(prompt):
        probs = tiny.next_token_probs.save()
    assert int(probs[0].argmax()) == first_token(tiny, " " + word)


@pytest.mark.parametrize(
    "target",
    [
        repeat_prompt(),  # 'king king\n1135 1135\nhello hello\n?' (the library default)
        TargetPrompt("cat -> cat\n1135 -> 1135\nhello -> hello\nX ->", -2),  # patch X, read after ->
    ],
    ids=["repeat_prompt", "arrow"],
)
def test_identity_patchscope_recovers_the_subject(
    tiny: StandardizedTransformer, target: TargetPrompt
) -> None:
    pairs = subject_sources()  # ("The capital of France", " France"), ("France", " France"), ...
    sources, subjects = [p[0] for p in pairs], [p[1] for p in pairs]
    middle = list(range(1, tiny.num_layers - 1))
    probs = patchscope_lens(tiny, sources, target, layers=middle)  # (n_sources, n_middle, vocab)
    expected = torch.tensor([first_token(tiny, s) for s in subjects])
    accuracy = (probs.argmax(-1) == expected[:, None]).float().mean(0)  # per middle layer
    assert float(accuracy.max()) > 0.5, f"subject recovered per middle layer {middle}: {accuracy.tolist()}"
