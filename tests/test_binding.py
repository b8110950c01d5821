"""The binding: one frozen description per model, computed once, from a reviewable row."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import uniterp._binding as binding_module
from uniterp import ArchitectureSpec, Binding, ConfigSwitch, InputError, StandardizedTransformer, lookup_spec
from uniterp._discovered import DISCOVERED
from uniterp._families import get_spec
from uniterp.testing import tiny_config, tiny_model_path

from conftest import PROMPTS, load_tiny


def test_the_binding_is_frozen_and_read_only() -> None:
    model = load_tiny("llama")
    binding = model.binding
    assert isinstance(binding, Binding)
    with pytest.raises(dataclasses.FrozenInstanceError):
        binding.block = "parallel"  # type: ignore[misc]
    with pytest.raises(TypeError):
        binding.layout.layers[0]["layers_output"] = None  # type: ignore[index]
    assert model.binding is binding  # the same object every time


def test_the_binding_is_computed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = binding_module.probe_layout

    def counting(*args, **kwargs):
        calls.append("probe")
        return real(*args, **kwargs)

    monkeypatch.setattr(binding_module, "probe_layout", counting)
    model = StandardizedTransformer(tiny_model_path("gpt2"), check_on_load=False)
    assert calls == [] and model._binding is None
    for _ in range(3):
        with torch.no_grad(), model.trace(PROMPTS):
            model.layers_output[0].save()
    assert calls == ["probe"]


@pytest.mark.parametrize(
    ("family", "source"),
    [("llama", "table"), ("gpt2", "table"), ("xlnet", "table")],
)
def test_hand_rows_say_where_they_come_from(family: str, source: str) -> None:
    model = load_tiny(family)
    assert model.binding.source == source
    assert "hand-written row" in model.binding.describe()
    assert not model.binding.checked_numerically  # hand rows are reviewed; check() is on demand


def test_every_generated_row_is_a_valid_spec_and_serves_its_type() -> None:
    assert len(DISCOVERED) > 100
    for model_type, spec in DISCOVERED.items():
        assert isinstance(spec, ArchitectureSpec)
        assert get_spec(model_type) is None, f"{model_type} is in both tables"
        assert lookup_spec(model_type) == (spec, "generated")
        # the row is data: its source reads back as the same spec
        assert (
            eval(spec.to_source(), {"ArchitectureSpec": ArchitectureSpec, "ConfigSwitch": ConfigSwitch})
            == spec
        )


@pytest.mark.parametrize("family", ["bamba", "nemotron", "exaone"])
def test_a_generated_row_is_checked_numerically_even_without_check_on_load(
    family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uniterp._check as check_module

    assert lookup_spec(family)[1] == "generated"
    calls: list[str] = []
    real = check_module.run_checks

    def counting(model, prompts=None):
        calls.append(model.model_type)
        return real(model, prompts)

    monkeypatch.setattr(check_module, "run_checks", counting)
    model = StandardizedTransformer(tiny_model_path(family), check_on_load=False)
    assert calls == []
    with torch.no_grad(), model.trace(PROMPTS):
        model.layers_output[0].save()
    assert calls == [family]
    assert model.binding.source == "generated" and model.binding.checked_numerically
    assert "generated row" in model.binding.describe()


def test_a_generated_row_that_does_not_fit_falls_back_to_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = DISCOVERED["exaone"].with_(layers="transformer.no_such_stack")
    monkeypatch.setitem(DISCOVERED, "exaone", broken)
    with pytest.raises(Exception, match="no module at that path|no ModuleList"):
        StandardizedTransformer(tiny_model_path("exaone"), spec=broken)
    model = StandardizedTransformer(tiny_model_path("exaone"))
    assert model.binding.source == "discovered"
    assert model.check().passed


def test_given_and_registered_specs() -> None:
    from uniterp import register_spec
    from uniterp._families import _REGISTERED, _SPECS

    path = tiny_model_path("llama")
    assert StandardizedTransformer(path, spec=get_spec("llama")).binding.source == "given"
    config = tiny_config("llama")
    assert config.model_type == "llama"
    try:
        register_spec("uniterp_test_type", get_spec("llama"))
        assert lookup_spec("uniterp_test_type") == (get_spec("llama"), "registered")
    finally:
        _SPECS.pop("uniterp_test_type", None)
        _REGISTERED.discard("uniterp_test_type")


def test_config_switch_is_data() -> None:
    class Config:
        use_parallel_residual = False

    switch = ConfigSwitch("use_parallel_residual", "parallel", "sequential", default=True)
    assert switch.resolve(Config()) == "sequential"
    assert switch.resolve(object()) == "parallel"  # the default when the config has no such key
    nested = ConfigSwitch("new_arch", "parallel", switch)
    assert nested.resolve(Config()) == "sequential"
    spec = ArchitectureSpec("e", "l", None, block=nested)
    assert "ConfigSwitch(" in spec.to_source()
    with pytest.raises(InputError, match="block must be one of"):
        ArchitectureSpec("e", "l", None, block=lambda config: "parallel")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [({"use_parallel_residual": True}, "parallel"), ({"use_parallel_residual": False}, "sequential")],
)
def test_block_layout_follows_the_config(overrides: dict, expected: str) -> None:
    model = StandardizedTransformer(tiny_model_path("gpt_neox", **overrides))
    assert model.binding.block == expected
    assert model.check().passed


def test_bloom_with_the_residual_after_the_norm_claims_no_sum() -> None:
    model = StandardizedTransformer(tiny_model_path("bloom", apply_residual_connection_post_layernorm=True))
    assert model.binding.block == "unknown"
    result = model.check()
    assert result.passed, str(result)
    assert StandardizedTransformer(tiny_model_path("bloom")).binding.block == "sequential"
