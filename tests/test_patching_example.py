"""The worked example of the docs on the embedded model: a task it solves, and sweeps that agree."""

from __future__ import annotations

import pytest
import torch

from uniterp import StandardizedTransformer
from uniterp.attribution import attribution_patching
from uniterp.edges import edge_attribution_patching
from uniterp.metrics import logit_diff
from uniterp.patching import patch_heads, patch_residual, patch_sweep
from uniterp.path_patching import path_patch

COUNTRIES = [("France", "Paris"), ("Japan", "Tokyo"), ("Germany", "Berlin"), ("Italy", "Rome")]


@pytest.fixture(scope="module")
def tiny() -> StandardizedTransformer:
    return StandardizedTransformer("uniterp-tiny")


def _task(model: StandardizedTransformer):
    clean = [f"The capital of {c} is" for c, _ in COUNTRIES]
    # each clean prompt is corrupted with the next country; the metric is its capital minus that one's
    corrupted = clean[1:] + clean[:1]
    good = [f" {a}" for _, a in COUNTRIES]
    bad = good[1:] + good[:1]
    return clean, corrupted, logit_diff(model, good, bad)


def test_the_embedded_model_solves_the_task(tiny: StandardizedTransformer) -> None:
    clean, corrupted, metric = _task(tiny)
    with torch.no_grad(), tiny.trace(clean):
        logits = tiny.logits.save()
    assert bool((metric(logits) > 2.0).all())  # every prompt prefers its own capital
    with torch.no_grad(), tiny.trace(corrupted):
        logits = tiny.logits.save()
    assert bool((metric(logits) < -2.0).all())  # and the corrupted prompts prefer the other one


def test_the_sweeps_tell_one_story(tiny: StandardizedTransformer) -> None:
    clean, corrupted, metric = _task(tiny)
    residual = patch_residual(tiny, clean, corrupted, metric)
    norm = residual.normalized()
    subject, last = 3, 4
    assert residual.tokens[subject] == " France"
    # the country's slot carries everything early, the last slot late; other slots nothing
    assert norm[0, subject] > 0.9 and norm[-1, last] > 0.99
    assert norm[:, :subject].abs().max() < 1e-4
    # the information moves between layer 2 and layer 3
    assert norm[2, subject] > 0.8 and norm[3, last] > 0.8
    # patching everything at the last layer is the clean run
    whole = patch_sweep(tiny, clean, corrupted, metric, "layers_output", over=("layer",))
    assert whole.values[-1] == pytest.approx(whole.clean_metric, abs=1e-3)
    # the heads that move it are in layers 0 and 3, and attribution patching finds the same ones
    heads = patch_heads(tiny, clean, corrupted, metric)
    top = {divmod(int(i), tiny.num_heads)[0] for i in torch.topk(heads.effects.flatten(), 4).indices}
    assert top <= {0, 3}
    atp = attribution_patching(tiny, clean, corrupted, metric, "head_outputs", over=("layer", "head"))
    corr = torch.corrcoef(torch.stack([atp.values.flatten(), heads.effects.flatten()]))[0, 1]
    assert corr > 0.9
    atp_res = attribution_patching(tiny, clean, corrupted, metric, "layers_output")
    corr = torch.corrcoef(torch.stack([atp_res.values.flatten(), residual.effects.flatten()]))[0, 1]
    assert corr > 0.95
    # edges: the subject goes through layer 0 into layer 3's attention
    edges = edge_attribution_patching(tiny, clean, corrupted, metric, ig_steps=4)
    names = {(u, d) for u, d, _ in edges.top(6)}
    assert ("mlp.0", "attn.3") in names
    path = path_patch(tiny, clean, corrupted, metric, ["mlp.0", "head.0.1"], ["attn.3"])
    assert path.normalized()[0] > 0.5 > path.normalized()[1]


def test_noising_mirrors_denoising(tiny: StandardizedTransformer) -> None:
    clean, corrupted, metric = _task(tiny)
    noise = patch_residual(tiny, clean, corrupted, metric, mode="noise")
    # patching the corrupted subject into the clean run breaks the answer where denoising restored it
    assert noise.normalized()[0, 3] > 0.9 and noise.values[0, 3] < 0
    assert noise.base_metric == pytest.approx(noise.clean_metric)
