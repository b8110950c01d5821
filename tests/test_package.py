"""The package root: lazy public names, nothing heavy at import, star import and nnsight registration."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import uniterp
from uniterp._version import __version__ as _VERSION

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_import_uniterp_and_version_import_nothing_heavy() -> None:
    out = _run(
        "import sys, uniterp\n"
        "v = uniterp.__version__\n"
        "print(v, [m for m in ('torch', 'transformers', 'nnsight') if m in sys.modules])\n"
    )
    assert out == f"{_VERSION} []"


def test_every_public_name_resolves_to_its_module_object() -> None:
    import importlib

    assert sorted(uniterp.__all__) == sorted(uniterp._EXPORTS)
    for name in uniterp.__all__:
        module = importlib.import_module(uniterp._EXPORTS[name], "uniterp")
        assert getattr(uniterp, name) is getattr(module, name), name
        assert name in dir(uniterp)


def test_type_checking_reexports_match_the_lazy_table() -> None:
    """Type checkers and the docs read the TYPE_CHECKING imports; they must list the same names."""
    tree = ast.parse((ROOT / "src" / "uniterp" / "__init__.py").read_text(encoding="utf-8"))
    guarded = next(
        node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    )
    reexports = {}
    for node in guarded.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names:
            assert alias.asname == alias.name, "re-export as `from ._x import y as y`"
            reexports[alias.name] = "." + node.module
    assert reexports == uniterp._EXPORTS


def test_unknown_attribute_is_an_attribute_error() -> None:
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        uniterp.nope  # noqa: B018


def test_star_import_and_nnsight_register_work() -> None:
    out = _run(
        "from uniterp import *\n"
        "import uniterp, nnsight\n"
        "missing = [n for n in uniterp.__all__ if n not in globals()]\n"
        "assert not missing, missing\n"
        "nnsight.register(uniterp)\n"
        "from cloudpickle.cloudpickle import _PICKLE_BY_VALUE_MODULES\n"
        "print('uniterp' in _PICKLE_BY_VALUE_MODULES, StandardizedTransformer.__module__)\n"
    )
    assert out == "True uniterp._model"


def test_the_types_of_public_properties_are_exported() -> None:
    """What ``model.<property>`` returns is importable from the package root (for annotations)."""
    import typing

    from uniterp import StandardizedTransformer

    missing = []
    for name in dir(StandardizedTransformer):
        attribute = inspect.getattr_static(StandardizedTransformer, name, None)
        if name.startswith("_") or not isinstance(attribute, property) or attribute.fget is None:
            continue
        returned = typing.get_type_hints(attribute.fget).get("return")
        module = getattr(returned, "__module__", "")
        if (
            isinstance(returned, type)
            and module.startswith("uniterp")
            and returned.__name__ not in uniterp.__all__
        ):
            missing.append(f"{name} -> {returned.__name__}")
    assert not missing, missing
