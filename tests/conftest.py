"""Shared fixtures: tiny random models, built once per session and loaded by path.

The tiny models are cached in ``$UNITERP_TINY_CACHE``. When it is not set, the
session creates a temporary folder for them and removes it when the session
ends (a run leaves nothing behind); a folder the user set is kept, so it can be
shared between runs.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def own_cache_folder() -> str | None:
    """Create this session's model cache unless the user set ``UNITERP_TINY_CACHE``; returns it."""
    if os.environ.get("UNITERP_TINY_CACHE"):
        return None
    folder = tempfile.mkdtemp(prefix="uniterp-tests-")
    os.environ["UNITERP_TINY_CACHE"] = folder
    return folder


def remove_cache_folder(folder: str | None) -> str | None:
    """Remove the session's own cache folder; returns an error message if something is left."""
    if folder is None:
        return None
    shutil.rmtree(folder, ignore_errors=True)
    if os.path.exists(folder):
        return f"the test session's model cache {folder} could not be removed"
    return None


_OWN_CACHE = own_cache_folder()

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


_PAIRS: dict[str, tuple[StandardizedTransformer, torch.nn.Module]] = {}


def model_and_reference(model_type: str) -> tuple[StandardizedTransformer, torch.nn.Module]:
    """The tiny uniterp model and a separately loaded plain HF copy of the same weights."""
    if model_type not in _PAIRS:
        from transformers import AutoModelForCausalLM

        path = tiny_model_path(model_type)
        _PAIRS[model_type] = (load_tiny(model_type), AutoModelForCausalLM.from_pretrained(path).eval())
    return _PAIRS[model_type]


@pytest.fixture
def hide_uniterp_source(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``remote="local"`` hide uniterp's source folder too.

    nnsight's local simulation keeps every ``*/src`` path importable, so with an
    editable install it would pass even if uniterp never registered itself for
    serialisation by value. Hiding the folder makes the check mean something.
    """
    import sys
    from pathlib import Path

    from nnsight.intervention.backends import local

    import uniterp

    hide = getattr(local.LocalSimulationBackend, "_hide_local_modules", None)
    if hide is None:
        pytest.skip("nnsight's local simulation backend changed")
    source = str(Path(uniterp.__file__).resolve().parent.parent)

    def hide_more(self):
        hidden = hide(self)
        for path in list(sys.path):
            if path == source:
                hidden["paths"].append(path)
                sys.path.remove(path)
        return hidden

    monkeypatch.setattr(local.LocalSimulationBackend, "_hide_local_modules", hide_more)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove what the session created; fail the run if it cannot."""
    problem = remove_cache_folder(_OWN_CACHE)
    if problem is not None:
        session.config.get_terminal_writer().line(f"ERROR: {problem}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
