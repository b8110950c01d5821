"""Folders holding several SAEs, picking one by hook, and the Hub path (offline refusal, and the
files a download asks for, with the download function replaced)."""

from __future__ import annotations

import fnmatch
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from uniterp import InputError
from uniterp.sae import detect_format, load_sae, load_saes

D_IN, D_SAE = 8, 32


def write_sparsify_hookpoint(folder: Path, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "encoder.weight": torch.randn(D_SAE, D_IN, generator=g),
        "encoder.bias": torch.randn(D_SAE, generator=g),
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_dec": torch.randn(D_IN, generator=g),
    }
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "sae.safetensors"))
    cfg = {
        "activation": "topk",
        "expansion_factor": 4,
        "normalize_decoder": True,
        "num_latents": D_SAE,
        "k": 3,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D_IN,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))


def write_saelens_sae(folder: Path, hook: str, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g),
        "b_enc": torch.randn(D_SAE, generator=g),
        "W_dec": torch.randn(D_SAE, D_IN, generator=g),
        "b_dec": torch.randn(D_IN, generator=g),
    }
    folder.mkdir(parents=True)
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    cfg = {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "architecture": "standard",
        "metadata": {"sae_lens_version": "6.5.0", "model_name": "gpt2", "hook_name": hook},
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))


@pytest.fixture
def sparsify_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    for i, name in enumerate(["layers.10", "layers.2", "embed_tokens", "layers.1.mlp"]):
        write_sparsify_hookpoint(run / name, seed=i)
    (run / "config.json").write_text(json.dumps({"model": "EleutherAI/pythia-70m", "sae": {"k": 3}}))
    return run


def test_load_saes_sparsify_run(sparsify_run: Path) -> None:
    saes = load_saes(sparsify_run)
    assert list(saes) == ["embed_tokens", "layers.1.mlp", "layers.2", "layers.10"]  # natural order
    assert [s.hook_name for s in saes.values()] == list(saes)
    assert {s.model_name for s in saes.values()} == {"EleutherAI/pythia-70m"}
    one = load_sae(sparsify_run, hook="layers.10")
    assert one.hook_name == "layers.10" and torch.equal(one.W_enc, saes["layers.10"].W_enc)
    assert load_sae(sparsify_run, subfolder="layers.2").hook_name == "layers.2"
    assert load_sae(sparsify_run / "layers.2" / "cfg.json").hook_name == "layers.2"  # a file in the folder
    assert detect_format(sparsify_run / "layers.2") == "sparsify" and detect_format(sparsify_run) is None
    assert list(load_saes(sparsify_run / "layers.2")) == ["layers.2"]


def test_picking_one_sae(sparsify_run: Path) -> None:
    with pytest.raises(InputError, match="holds 4 SAEs; pick one with hook=.*'layers.10'"):
        load_sae(sparsify_run)
    with pytest.raises(InputError, match="no SAE in .* matches hook='layers.99'; available: 'embed_tokens'"):
        load_sae(sparsify_run, hook="layers.99")
    with pytest.raises(InputError, match="matches hook='layers.3'"):
        load_sae(sparsify_run / "layers.2", hook="layers.3")  # a hook that contradicts the folder
    with pytest.raises(InputError, match="no folder 'layers.7'"):
        load_sae(sparsify_run, subfolder="layers.7")
    with pytest.raises(InputError, match="no dictionary_learning SAE found"):
        load_saes(sparsify_run, format="dictionary_learning")


def test_saelens_release_layout(tmp_path: Path) -> None:
    release = tmp_path / "release"
    write_saelens_sae(release / "blocks.0.hook_resid_pre", "blocks.0.hook_resid_pre", seed=0)
    write_saelens_sae(release / "width_16k" / "sae_1", "blocks.1.hook_mlp_out", seed=1)
    (release / ".cache").mkdir()  # hidden folders (a Hub snapshot's) are skipped
    saes = load_saes(release)
    assert list(saes) == ["blocks.0.hook_resid_pre", "width_16k/sae_1"]
    by_hook = load_sae(release, hook="blocks.1.hook_mlp_out")  # the hook name in cfg.json
    assert by_hook.metadata.path == str(release / "width_16k" / "sae_1")
    assert load_sae(release, hook="width_16k/sae_1").hook_name == "blocks.1.hook_mlp_out"


# --- the Hub ------------------------------------------------------------------------------------------


def test_hub_offline_refuses_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        InputError, match="not a local folder, and the Hugging Face Hub is offline \\(HF_HUB_OFFLINE=1\\)"
    ):
        load_sae("some-org/some-saes", hook="layers.3")
    with pytest.raises(InputError, match="offline"):
        load_saes("some-org/some-saes")
    with pytest.raises(InputError, match="no such file or folder"):
        load_sae("not/a/repo/id")


class FakeHub:
    """Stands in for ``huggingface_hub.snapshot_download``: serves a local folder, records the patterns."""

    def __init__(self, remote: Path, cache: Path) -> None:
        self.remote, self.cache, self.calls = remote, cache, []

    def __call__(self, repo_id: str, *, revision=None, allow_patterns=None, **kwargs) -> str:
        self.calls.append((repo_id, revision, list(allow_patterns)))
        for path in self.remote.rglob("*"):
            rel = path.relative_to(self.remote).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                target = self.cache / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, target)
        return str(self.cache)

    def fetched(self) -> set[str]:
        return {p.relative_to(self.cache).as_posix() for p in self.cache.rglob("*") if p.is_file()}


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, sparsify_run: Path, tmp_path: Path) -> FakeHub:
    import uniterp.sae._hub as hub

    fake = FakeHub(sparsify_run, tmp_path / "cache")
    monkeypatch.setattr(hub, "snapshot_download", fake)
    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.chdir(tmp_path)  # "org/repo" is not a local path here
    return fake


def test_hub_fetches_configs_then_one_hookpoint(fake_hub: FakeHub, sparsify_run: Path) -> None:
    sae = load_sae("EleutherAI/sae-test", hook="layers.10", revision="v1")
    assert fake_hub.calls == [
        ("EleutherAI/sae-test", "v1", ["*.json"]),
        ("EleutherAI/sae-test", "v1", ["layers.10/*"]),
    ]
    assert "layers.2/sae.safetensors" not in fake_hub.fetched()  # only the weights asked for
    assert sae.hook_name == "layers.10" and sae.model_name == "EleutherAI/pythia-70m"
    assert torch.equal(sae.W_enc, load_sae(sparsify_run / "layers.10").W_enc)


def test_hub_subfolder_and_several(fake_hub: FakeHub) -> None:
    assert load_sae("EleutherAI/sae-test", subfolder="layers.2").hook_name == "layers.2"
    assert fake_hub.calls == [("EleutherAI/sae-test", None, ["layers.2/*"])]
    fake_hub.calls.clear()
    with pytest.raises(InputError, match="holds 4 SAEs"):
        load_sae("EleutherAI/sae-test")
    assert fake_hub.calls == [("EleutherAI/sae-test", None, ["*.json"])]  # nothing heavy before choosing
    fake_hub.calls.clear()
    saes = load_saes("EleutherAI/sae-test")
    assert list(saes) == ["embed_tokens", "layers.1.mlp", "layers.2", "layers.10"]
    assert fake_hub.calls[1][2] == ["embed_tokens/*", "layers.1.mlp/*", "layers.2/*", "layers.10/*"]


def test_hub_sae_at_repository_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uniterp.sae._hub as hub

    write_saelens_sae(tmp_path / "remote", "blocks.5.hook_resid_post")
    (tmp_path / "remote" / "README.md").write_text("not fetched")
    fake = FakeHub(tmp_path / "remote", tmp_path / "cache")
    monkeypatch.setattr(hub, "snapshot_download", fake)
    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.chdir(tmp_path)
    sae = load_sae("org/one-sae")
    assert sae.hook_name == "blocks.5.hook_resid_post"
    assert fake.calls[1][2] == hub.ROOT_FILES and "README.md" not in fake.fetched()


def test_hub_download_failure_is_an_input_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import uniterp.sae._hub as hub

    def failing(*args, **kwargs):
        raise OSError("connection refused")

    monkeypatch.setattr(hub, "snapshot_download", failing)
    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="could not download .* 'org/x': OSError: connection refused"):
        load_sae("org/x")
