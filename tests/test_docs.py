"""The documentation site builds offline with ``mkdocs build --strict`` (no warnings)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path: Path) -> None:
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:
        pytest.skip("mkdocs / mkdocstrings are not installed (pip install -e '.[docs]', or `make docs`)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr
    for page in (
        "index.html",
        "quickstart.html",
        "migrating-from-nnterp.html",
        "api/model.html",
        "api/nnterp.html",
    ):
        assert (site / page).is_file(), page
    api = (site / "api" / "tools.html").read_text(encoding="utf-8")
    assert "logit_lens" in api and "patchscope_lens" in api
    # opened from disk: links point at pages, not folders, and nothing comes from a CDN
    import re

    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, page
        if page.name == "404.html":  # served by a web server only: root-relative links by design
            continue
        for link in re.findall(r'href="([^"#?]+)"', text):
            if "://" not in link and not link.startswith("mailto:"):
                assert not link.endswith("/"), (page, link)
                assert (page.parent / link).resolve().exists(), (page, link)


RUN_PAGES = r"""
import linecache, pathlib, re, sys, traceback, torch
torch.set_num_threads(1)
failed = []
for page in sys.argv[1:]:
    text = pathlib.Path(page).read_text(encoding="utf-8")
    scope = {"__name__": "__docs__"}
    for number, block in enumerate(re.findall(r"```python\n(.*?)```", text, flags=re.S)):
        name = f"<{page} block {number}>"  # nnsight reads a trace's source through linecache
        linecache.cache[name] = (len(block), None, block.splitlines(True), name)
        try:
            exec(compile(block, name, "exec"), scope)
        except Exception:
            failed.append(page + "\n" + block + "\n" + traceback.format_exc())
            break
print("\n\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_docs_python_examples_run(tmp_path: Path) -> None:
    pytest.importorskip("plotly")
    pages = sorted(
        str(p) for p in (ROOT / "docs").rglob("*.md") if "```python" in p.read_text(encoding="utf-8")
    )
    assert len(pages) >= 8
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", RUN_PAGES, *pages],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_readme_states_the_counts_of_the_committed_support_matrix() -> None:
    import json

    records = json.loads((ROOT / "docs" / "support-matrix.json").read_text(encoding="utf-8"))["records"]
    buildable = [r for r in records if r["status"] != "not buildable"]
    exact = [r for r in buildable if r["status"] == "exact"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"**{len(exact)} of the {len(buildable)} buildable types are exact" in readme
    assert f"the other {len(buildable) - len(exact)} are refused" in readme
    matrix = (ROOT / "docs" / "support-matrix.md").read_text(encoding="utf-8")
    assert f"**{len(exact)} of {len(buildable)} buildable types are exact" in matrix

    def having(site: str) -> int:
        return sum(1 for r in exact if r["support"].get(site, {}).get("layers"))

    assert f"`queries` on {having('queries')}, `keys`/`values` on {having('keys')}" in readme
    assert having("keys") == having("values")
    assert f"`head_outputs` on {having('head_outputs')}, `mlp_neurons` on {having('mlp_neurons')}" in readme
    assert f"`mixer_states` on the {having('mixer_states')} with" in readme


def _mkdocs_config() -> dict:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml may use python tags (e.g. for emoji); they are irrelevant here
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
    return yaml.load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"), Loader=Loader)


def test_site_works_opened_from_disk() -> None:
    config = _mkdocs_config()
    assert config["use_directory_urls"] is False  # folder links would show a file listing from disk
    assert config["theme"]["font"] is False  # no Google Fonts from a CDN
    css = [ROOT / "docs" / path for path in config.get("extra_css", [])]
    assert any("white-space: pre-wrap" in path.read_text(encoding="utf-8") for path in css), (
        "code blocks must wrap so long comments are not cut off"
    )


def test_docs_state_the_embedded_model_layer_count() -> None:
    import json
    import re

    config = json.loads((ROOT / "src" / "uniterp" / "models" / "uniterp-tiny" / "config.json").read_text())
    layers = config["num_hidden_layers"]
    pages = [ROOT / "README.md", ROOT / "src" / "uniterp" / "tiny.py", *sorted((ROOT / "docs").rglob("*.md"))]
    claims = 0
    for page in pages:
        for paragraph in re.split(r"\n\s*\n", page.read_text(encoding="utf-8")):
            if "uniterp-tiny" not in paragraph and page.name != "tiny-model.md":
                continue
            for number in re.findall(r"\b(\d+)[- ]layers?\b", paragraph):
                assert int(number) == layers, (
                    f"{page.relative_to(ROOT)} says {number} layers: {paragraph[:200]!r}"
                )
                claims += 1
    index = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    assert f"a {layers}-layer Llama-layout model" in index
    assert claims >= 4
