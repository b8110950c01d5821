"""A test run leaves no temporary folders behind (and keeps a cache folder the user chose)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

INNER_TEST = """
import os
from pathlib import Path

from uniterp.testing import tiny_model_path


def test_builds_a_model():
    path = tiny_model_path("gpt2")
    assert Path(path, "config.json").is_file()
    Path(os.environ["RECORD"]).write_text(os.environ["UNITERP_TINY_CACHE"])
"""


def _run_session(folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A separate pytest session with this suite's conftest and one test that builds a model."""
    shutil.copy(HERE / "conftest.py", folder / "conftest.py")
    (folder / "test_inner.py").write_text(INNER_TEST, encoding="utf-8")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,
        timeout=300,
    )


def test_session_removes_the_cache_folder_it_created(tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    env = {k: v for k, v in os.environ.items() if k != "UNITERP_TINY_CACHE"}
    env.update(RECORD=str(record), TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    suite = tmp_path / "suite"
    suite.mkdir()
    result = _run_session(suite, env)
    assert result.returncode == 0, result.stdout + result.stderr
    cache = Path(record.read_text())
    assert cache.parent == tmp_path / "tmp" and cache.name.startswith("uniterp-tests-")
    assert not cache.exists(), "the session left its model cache behind"
    # nothing else of ours either (torch keeps its own compile cache, torchinductor_<user>, there)
    left = [p.name for p in (tmp_path / "tmp").iterdir() if not p.name.startswith("torchinductor_")]
    assert left == [], left


def test_session_keeps_a_cache_folder_the_user_set(tmp_path: Path) -> None:
    record = tmp_path / "record.txt"
    cache = tmp_path / "my-cache"
    env = {**os.environ, "UNITERP_TINY_CACHE": str(cache), "RECORD": str(record)}
    suite = tmp_path / "suite"
    suite.mkdir()
    result = _run_session(suite, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert Path(record.read_text()) == cache
    assert any(cache.iterdir()), "a cache folder the user set is kept for the next run"


def test_cleanup_helpers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import own_cache_folder, remove_cache_folder

    monkeypatch.setenv("UNITERP_TINY_CACHE", str(tmp_path / "set-by-user"))
    assert own_cache_folder() is None  # honoured, not replaced
    monkeypatch.delenv("UNITERP_TINY_CACHE")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folder = own_cache_folder()
    assert folder is not None and os.environ["UNITERP_TINY_CACHE"] == folder and Path(folder).is_dir()
    (Path(folder) / "model").mkdir()
    (Path(folder) / "model" / "weights.bin").write_bytes(b"x" * 1000)
    assert remove_cache_folder(folder) is None
    assert not Path(folder).exists()
    assert remove_cache_folder(None) is None
