"""Shared fixtures: tiny random models, built once per session and loaded by path."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("UNITERP_TINY_CACHE", tempfile.mkdtemp(prefix="uniterp-tests-"))

from uniterp import StandardizedTransformer  # noqa: E402
from uniterp.testing import TINY_FAMILIES, tiny_model_path  # noqa: E402

torch.manual_seed(0)
# Tiny models gain nothing from threads; one thread keeps the suite fast on a shared machine.
torch.set_num_threads(1)

_MODELS: dict[str, StandardizedTransformer] = {}


def load_tiny(model_type: str) -> StandardizedTransformer:
    """A loaded tiny model of ``model_type`` (cached for the session)."""
    if model_type not in _MODELS:
        _MODELS[model_type] = StandardizedTransformer(tiny_model_path(model_type))
    return _MODELS[model_type]


@pytest.fixture(params=TINY_FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def model(family: str) -> StandardizedTransformer:
    return load_tiny(family)


PROMPTS = ["The Eiffel Tower is in the city of", "hello world", "one two three four five six seven"]
