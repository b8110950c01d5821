"""Attaching SAEs and transcoders: the exact no-edit path, edits against plain torch hooks, several at
once, detaching, gradients, and every refusal."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from sae_models import Model, load, random_sae, random_transcoder, reference
from uniterp._errors import InputError, OrderError, OutsideTraceError, ShapeError, UnavailableError
from uniterp._nnsight_compat import native_module
from uniterp._sae_attach import SAELatents, attach_sae, detach_sae

from conftest import PROMPTS
from reference import NATIVE, encode, first_tensor, hooks

FAMILIES = [
    "uniterp-tiny",
    "llama",
    "gpt2",
    "gemma2",
    "gpt_neox",
    "mixtral",
    "opt",
    "falcon",
    "bloom",
    "qwen2_moe",
]


@pytest.fixture
def clean() -> Iterator[None]:
    """Detach everything the test attached, whatever happens."""
    yield
    from sae_models import _MODELS

    for model in _MODELS.values():
        model.detach()


def logits(model: Model, prompts: list[str] = PROMPTS) -> torch.Tensor:
    with torch.no_grad(), model.trace(prompts):
        out = model.logits.save()
    return out


def widths(model: Model, layer: int) -> tuple[int, int]:
    """Widths of hook_z (heads flattened) and mlp.hook_post at ``layer``."""
    with torch.no_grad(), model.trace("hi"):
        z = model.sites[f"blocks.{layer}.attn.hook_z"].save()
    if "mlp_neurons" not in model.binding.layout.layers[layer]:
        return z.shape[-2] * z.shape[-1], 0
    with torch.no_grad(), model.trace("hi"):
        neurons = model.sites[f"blocks.{layer}.mlp.hook_post"].save()
    return z.shape[-2] * z.shape[-1], neurons.shape[-1]


# Hook names tried on layer 1 of every family; those a family lacks are refused with a reason.
HOOKS = [
    "hook_resid_pre",
    "ln1.hook_normalized",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_normalized",
    "hook_mlp_in",
    "hook_mlp_out",
    "hook_resid_post",
]


def attach_everywhere(model: Model, layer: int = 1) -> list[str]:
    """Random SAEs on every attachable hook of ``layer``, hook_z and mlp.hook_post, and a transcoder on
    layer 0; the names attached."""
    hidden = model.hidden_size
    names: list[str] = []
    for i, hook in enumerate(HOOKS):
        name = f"blocks.{layer}.{hook}"
        try:
            model.attach(random_sae(hidden, hook=name, seed=i), check=False)
        except UnavailableError as error:
            assert error.reason  # refused with the reason (parallel blocks: no resid_mid)
            continue
        names.append(name)
    z, neurons = widths(model, layer)
    model.attach(random_sae(z, hook=f"blocks.{layer}.attn.hook_z", seed=20), check=False)
    names.append(f"blocks.{layer}.attn.hook_z")
    if neurons:
        model.attach(random_sae(neurons, hook=f"blocks.{layer}.mlp.hook_post", seed=21), check=False)
        names.append(f"blocks.{layer}.mlp.hook_post")
    tc = random_transcoder(hidden, hidden, "blocks.0.hook_mlp_in", "blocks.0.hook_mlp_out")
    model.attach(tc, check=False)
    names.append("blocks.0.hook_mlp_in")
    return names


@pytest.mark.parametrize("family", FAMILIES)
def test_unedited_latents_leave_the_logits_bit_for_bit(family: str, clean: None) -> None:
    model = load(family)
    base = logits(model)
    names = attach_everywhere(model)
    assert len(names) >= 9
    assert torch.equal(logits(model), base)
    # read every latents tensor (forward order) and write back a copy: the splice runs and is exact
    with torch.no_grad(), model.trace(PROMPTS):
        for name in model.sae_latents.keys():
            model.sae_latents[name] = model.sae_latents[name].clone()
        spliced = model.logits.save()
    assert torch.equal(spliced, base)
    # with gradients on, and with the latents kept in the graph
    for item in model.attachments.values():
        item.track_grad = True
    with model.trace(PROMPTS):
        tracked = model.logits.save()
    assert tracked.requires_grad
    assert torch.equal(tracked.detach(), base)
    model.detach()
    assert torch.equal(logits(model), base)


@pytest.mark.parametrize("family", FAMILIES)
def test_latents_are_the_encoding_of_the_native_value(family: str, clean: None) -> None:
    model = load(family)
    stack = NATIVE.get(family, NATIVE["llama"])[0]
    sae = random_sae(model.hidden_size, hook="blocks.1.hook_resid_post")
    model.attach(sae, check=False)
    with torch.no_grad(), model.trace(PROMPTS):
        latents = model.sae_latents["blocks.1.hook_resid_post"].save()
    seen: list[torch.Tensor] = []
    hf = reference(family)
    with torch.no_grad(), hooks(hf, {f"{stack}.1": lambda m, a, k, out: seen.append(first_tensor(out))}):
        hf(**encode(model, PROMPTS))
    assert torch.equal(latents, sae.encode(seen[0]))


# family -> native path (relative to the causal LM) of the value an edit at each hook must move,
# and how the model scales a change there (a norm's gain for a normalized value)
def _reference_site(family: str, hook: str) -> str:
    stack, attn, attn_out, mlp_in, mlp_out = NATIVE.get(family, NATIVE["llama"])
    block = f"{stack}.1"
    if hook == "hook_resid_post":
        return block
    if hook == "hook_mlp_out":
        return f"{block}.post_feedforward_layernorm" if family == "gemma2" else f"{block}.{mlp_out}"
    raise AssertionError(hook)


@pytest.mark.parametrize("family", ["uniterp-tiny", "llama", "gpt2", "gemma2", "gpt_neox", "mixtral", "opt"])
@pytest.mark.parametrize("hook", ["hook_resid_post", "hook_mlp_out"])
def test_editing_a_latent_equals_adding_its_decoder_row_with_a_plain_hook(
    family: str, hook: str, clean: None
) -> None:
    model = load(family)
    name = f"blocks.1.{hook}"
    sae = random_sae(model.hidden_size, hook=name)
    model.attach(sae, check=False)
    with torch.no_grad(), model.trace(PROMPTS):
        latents = model.sae_latents[name]
        latents[:, -1, 7] += 3.0  # the last token of every row (left padding)
        edited = model.logits.save()

    def add(_m, _a, _k, out):
        h = first_tensor(out)
        if h.dim() == 2:  # OPT's fc2 sees (batch * seq, hidden): the last token of each row
            h = h.view(len(PROMPTS), -1, h.shape[-1])
            h[:, -1] += 3.0 * sae.W_dec[7]
        else:
            h[:, -1] += 3.0 * sae.W_dec[7]

    hf = reference(family)
    with torch.no_grad(), hooks(hf, {_reference_site(family, hook): add}):
        expected = hf(**encode(model, PROMPTS)).logits
    plain = logits(model)
    assert not torch.allclose(edited, plain, atol=1e-4)
    torch.testing.assert_close(edited, expected, atol=2e-5, rtol=1e-4)


def test_gemma2_mlp_out_is_after_the_post_mlp_norm(clean: None) -> None:
    model = load("gemma2")
    report = model.attach(random_sae(model.hidden_size, hook="blocks.1.hook_mlp_out"), check=False)
    assert report.site == "mlps_output_normed.1"
    assert (
        model.attachments["blocks.1.hook_mlp_out"].site.loc.path
        == "model.layers.1.post_feedforward_layernorm"
    )
    # sparsify names the module: its output is the raw MLP output
    raw = random_sae(model.hidden_size, hook="layers.1.mlp", seed=3)
    raw.metadata.hook_io = "out"
    assert model.attach(raw, check=False).site == "mlps_output.1"


def test_parallel_blocks_refuse_resid_mid_with_the_reason() -> None:
    model = load("gpt_neox")
    with pytest.raises(UnavailableError, match="parallel block"):
        model.attach(random_sae(model.hidden_size, hook="blocks.1.hook_resid_mid"), check=False)


@pytest.mark.parametrize("family", ["uniterp-tiny", "gemma2", "gpt2"])
def test_normalized_value_edit_goes_through_the_norm_gain(family: str, clean: None) -> None:
    model = load(family)
    name = "blocks.1.ln2.hook_normalized"
    sae = random_sae(model.hidden_size, hook=name)
    model.attach(sae, check=False)
    norm_path = model.attachments[name].site.loc.path
    with torch.no_grad(), model.trace(PROMPTS):
        model.sae_latents[name][:, -1, 5] += 2.0
        edited = model.logits.save()
    hf = reference(family)
    norm = hf.get_submodule(norm_path)
    gain = (1 + norm.weight) if family == "gemma2" else norm.weight  # Gemma's RMSNorm scales by 1 + weight

    def add(_m, _a, _k, out):
        out[:, -1] += (2.0 * gain * sae.W_dec[5]).to(out.dtype)

    with torch.no_grad(), hooks(hf, {norm_path: add}):
        expected = hf(**encode(model, PROMPTS)).logits
    torch.testing.assert_close(edited, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["uniterp-tiny", "gpt2", "gpt_neox"])
def test_hook_z_sae_reads_the_flattened_heads_and_a_single_head_sae_one_head(
    family: str, clean: None
) -> None:
    model = load(family)
    z_width, _ = widths(model, 1)
    head_dim = z_width // model.num_heads
    full = random_sae(z_width, hook="blocks.1.attn.hook_z")
    model.attach(full, check=False)
    # head_outputs is the output projection's input: the latents come right before it
    with torch.no_grad(), model.trace(PROMPTS):
        latents = model.sae_latents["blocks.1.attn.hook_z"].save()
        z = model.sites["blocks.1.attn.hook_z"].save()  # (batch, seq, heads, head_dim)
    assert torch.equal(latents, full.encode(z.flatten(-2)))
    model.detach()
    one = random_sae(head_dim, hook="blocks.1.attn.hook_z", seed=4)
    one.metadata.hook_head_index = 2
    model.attach(one, check=False)
    with torch.no_grad(), model.trace(PROMPTS):
        latents = model.sae_latents["blocks.1.attn.hook_z"].save()
        z = model.sites["blocks.1.attn.hook_z"].save()
    assert torch.equal(latents, one.encode(z[..., 2, :]))
    with torch.no_grad(), model.trace(PROMPTS):
        model.sae_latents["blocks.1.attn.hook_z"][..., 0] += 1.0
        after = model.sites["blocks.1.attn.hook_z"].save()
    others = [h for h in range(model.num_heads) if h != 2]
    assert torch.equal(after[..., others, :], z[..., others, :])
    torch.testing.assert_close(after[..., 2, :] - z[..., 2, :], one.W_dec[0].expand_as(z[..., 2, :]))


def test_flattened_site_gives_batch_seq_latents(clean: None) -> None:
    model = load("opt")  # OPT's MLP sees (batch * seq, hidden)
    sae = random_sae(model.hidden_size, hook="blocks.1.hook_mlp_out")
    model.attach(sae, check=False)
    with torch.no_grad(), model.trace(PROMPTS):
        out = model.mlps_output[1].save()
        latents = model.sae_latents["blocks.1.hook_mlp_out"].save()
    assert latents.shape == (*out.shape[:2], sae.d_sae)
    assert torch.equal(latents, sae.encode(out))


@pytest.mark.parametrize("family", ["uniterp-tiny", "llama", "gemma2", "mixtral"])
def test_transcoder_edit_moves_the_mlp_output_by_its_decoder_row(family: str, clean: None) -> None:
    model = load(family)
    hidden = model.hidden_size
    tc = random_transcoder(hidden, hidden, "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out", skip=True)
    report = model.attach(tc, check=False)
    assert report.site_out in ("mlps_output.1", "mlps_output_normed.1")
    base = logits(model)
    with torch.no_grad(), model.trace(PROMPTS):
        model.sae_latents["blocks.1.ln2.hook_normalized"][:, -1, 9] += 2.0
        edited = model.logits.save()
    out_path = model.attachments["blocks.1.ln2.hook_normalized"].site_out.loc.path

    def add(_m, _a, _k, out):
        first_tensor(out)[:, -1] += 2.0 * tc.W_dec[9]

    hf = reference(family)
    with torch.no_grad(), hooks(hf, {out_path: add}):
        expected = hf(**encode(model, PROMPTS)).logits
    assert not torch.allclose(edited, base, atol=1e-4)
    torch.testing.assert_close(edited, expected, atol=2e-5, rtol=1e-4)


def test_sparsify_transcoder_reads_the_module_input_and_writes_its_output(clean: None) -> None:
    model = load("llama")
    hidden = model.hidden_size
    tc = random_transcoder(hidden, hidden, "layers.1.mlp", "layers.1.mlp")
    tc.metadata.hook_io = "in_and_out"
    report = model.attach(tc, check=False)
    assert (report.site, report.site_out) == ("mlps_input.1", "mlps_output.1")
    base = logits(model)
    with torch.no_grad(), model.trace(PROMPTS):
        x = model.mlps_input[1].save()
        y = model.mlps_output[1].save()
        latents = model.sae_latents["layers.1.mlp"].save()
    assert torch.equal(latents, tc.encode(x))
    assert torch.equal(logits(model), base)
    assert y.shape == x.shape


def test_several_saes_read_in_forward_order_and_detach_one_by_one(clean: None) -> None:
    model = load("uniterp-tiny")
    base = logits(model)
    late = random_sae(model.hidden_size, hook="blocks.4.hook_resid_post", seed=1)
    early = random_sae(model.hidden_size, hook="blocks.1.hook_resid_post", seed=2)
    with model.attached(late, early) as reports:
        assert [r.name for r in reports] == ["blocks.4.hook_resid_post", "blocks.1.hook_resid_post"]
        assert list(model.attachments) == ["blocks.1.hook_resid_post", "blocks.4.hook_resid_post"]
        with torch.no_grad(), model.trace(PROMPTS):
            a = model.sae_latents["blocks.1.hook_resid_post"].save()
            h = model.layers_output[4].save()
            b = model.sae_latents["blocks.4.hook_resid_post"].save()
        assert torch.equal(b, late.encode(h)) and a.shape == b.shape
        with pytest.raises(OrderError, match="sae_latents"):
            with torch.no_grad(), model.trace(PROMPTS):
                model.sae_latents["blocks.4.hook_resid_post"].save()
                model.sae_latents["blocks.1.hook_resid_post"].save()
        model.detach(early)
        assert list(model.attachments) == ["blocks.4.hook_resid_post"]
    assert model.attachments == {}
    assert torch.equal(logits(model), base)
    layer = native_module(model).get_submodule("model.layers.4")
    assert not layer._forward_hooks and not layer._forward_pre_hooks


def test_gradients_reach_the_latents_and_no_grad_builds_no_graph(clean: None) -> None:
    model = load("uniterp-tiny")
    sae = random_sae(model.hidden_size, hook="blocks.2.hook_resid_post")
    model.attach(sae, check=False)
    model.attachments["blocks.2.hook_resid_post"].track_grad = True
    with model.trace(PROMPTS):
        latents = model.sae_latents["blocks.2.hook_resid_post"].save()
        out = model.logits.save()
    (grad,) = torch.autograd.grad(out[:, -1].sum(), latents)
    assert grad.shape == latents.shape and grad.abs().sum() > 0
    with torch.no_grad(), model.trace(PROMPTS):
        latents = model.sae_latents["blocks.2.hook_resid_post"].save()
        out = model.logits.save()
    assert not latents.requires_grad and not out.requires_grad


def test_functions_work_on_a_model_without_the_mixin(clean: None) -> None:
    from conftest import load_tiny

    model = load_tiny("llama")
    sae = random_sae(model.hidden_size, hook="blocks.1.hook_resid_post")
    base = logits(model)  # type: ignore[arg-type]
    attach_sae(model, sae, check=False)
    try:
        with torch.no_grad(), model.trace(PROMPTS):
            latents = SAELatents(model)["blocks.1.hook_resid_post"]
            latents[..., 0] = 0.0
            edited = model.logits.save()
        assert edited.shape == base.shape
    finally:
        detach_sae(model)
    assert torch.equal(logits(model), base)  # type: ignore[arg-type]


# -- refusals ---------------------------------------------------------------------------------


def test_bad_inputs_raise_uniterp_errors(clean: None) -> None:
    model = load("uniterp-tiny")
    hidden = model.hidden_size
    with pytest.raises(InputError, match="unknown TransformerLens hook"):
        model.attach(random_sae(hidden, hook="blocks.1.hook_nothing"), check=False)
    with pytest.raises(InputError, match="is not a standardized value"):
        model.attach(random_sae(hidden, hook="no.such.module"), check=False)
    with pytest.raises(InputError, match="names no hook point"):
        model.attach(random_sae(hidden), check=False)
    with pytest.raises(ShapeError, match=r"d_in=96 .* 128 wide"):
        model.attach(random_sae(96, hook="blocks.1.hook_resid_post"), check=False)
    with pytest.raises(InputError, match="SparseAutoencoder"):
        model.attach(torch.nn.Linear(2, 2), check=False)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="not to 'queries_pre_rotary'"):
        model.attach(random_sae(32, hook="blocks.1.attn.hook_q"), check=False)
    with pytest.raises(InputError, match="not to 'logits'"):
        model.attach(random_sae(hidden, hook="logits"), check=False)
    model.attach(random_sae(hidden, hook="blocks.1.hook_resid_post"), check=False)
    with pytest.raises(InputError, match="already attached as"):
        model.attach(random_sae(hidden, hook="blocks.1.hook_resid_post", seed=1), check=False)
    with pytest.raises(InputError, match="already has the SAE"):
        model.attach(random_sae(hidden, hook="layers_output.1", seed=1), name="other", check=False)
    with pytest.raises(OutsideTraceError, match="sae_latents"):
        model.sae_latents["blocks.1.hook_resid_post"]  # noqa: B018
    with pytest.raises(InputError, match="no SAE is attached as 'blocks.2.hook_resid_post'"):
        with torch.no_grad(), model.trace(PROMPTS):
            model.sae_latents["blocks.2.hook_resid_post"]  # noqa: B018
    with pytest.raises(ShapeError, match=r"\(batch, seq, d_sae=96\)"):
        with torch.no_grad(), model.trace(PROMPTS):
            model.sae_latents["blocks.1.hook_resid_post"] = torch.zeros(1, 2, 96)
    with pytest.raises(InputError, match="before opening a trace"):
        with torch.no_grad(), model.trace(PROMPTS):
            model.attach(random_sae(hidden, hook="blocks.3.hook_resid_post"), check=False)
    with pytest.raises(InputError, match="no SAE is attached"):
        model.detach("blocks.5.hook_resid_post")
    backwards = random_transcoder(hidden, hidden, "blocks.2.hook_mlp_out", "blocks.1.hook_mlp_out")
    with pytest.raises(InputError, match="must come after the input"):
        model.attach(backwards, check=False)
    no_out = random_transcoder(hidden, hidden, "blocks.2.hook_mlp_in", None)
    with pytest.raises(InputError, match="names no output hook point"):
        model.attach(no_out, check=False)
    with pytest.raises(ShapeError, match="hook_head_index"):
        wrong = random_sae(7, hook="blocks.1.attn.hook_z")
        wrong.metadata.hook_head_index = 0
        model.attach(wrong, check=False)


def test_sae_on_another_device_is_refused() -> None:
    model = load("uniterp-tiny")
    sae = random_sae(model.hidden_size, hook="blocks.1.hook_resid_post").to("meta")
    with pytest.raises(InputError, match=r"sae.to\('cpu'\)"):
        model.attach(sae, check=False)


def test_remote_traces_are_refused_while_attached_and_work_after(clean: None) -> None:
    model = load("llama")
    base = logits(model)
    model.attach(random_sae(model.hidden_size, hook="blocks.1.hook_resid_post"), check=False)
    with pytest.raises(InputError, match="would not run remotely"):
        with torch.no_grad(), model.trace(PROMPTS, remote="local"):
            model.logits.save()
    model.detach()
    with torch.no_grad(), model.trace(PROMPTS, remote="local"):
        remote = model.logits.save()
    assert torch.equal(remote, base)


def test_bfloat16_model_with_a_float32_sae_is_exact_unedited(clean: None) -> None:
    from sae_models import Model
    from uniterp.testing import tiny_model_path

    model = Model(tiny_model_path("llama"), dtype=torch.bfloat16)
    base = logits(model)
    sae = random_sae(model.hidden_size, hook="blocks.1.hook_resid_post")
    model.attach(sae, check=False)
    try:
        with torch.no_grad(), model.trace(PROMPTS):
            latents = model.sae_latents["blocks.1.hook_resid_post"]
            assert latents.dtype == torch.float32
            model.sae_latents["blocks.1.hook_resid_post"] = latents.clone()  # the splice runs
            spliced = model.logits.save()
        assert spliced.dtype == torch.bfloat16 and torch.equal(spliced, base)
    finally:
        model.detach()
