"""Build the tiny model of every causal-LM ``model_type`` and record what uniterp makes of it.

For each type: build a tiny random model (``uniterp.testing``), load it with
``StandardizedTransformer`` (load-time validation), run ``check()`` and
``support()``, and load it again with ``enable_attention_probs=True``. Each batch of
types runs in its own subprocess with a memory cap and a time limit, so one
misbehaving model cannot take the run down. Writes ``docs/support-matrix.md`` and
``docs/support-matrix.json``, and ``src/uniterp/_discovered.py``: the row automatic
discovery finds for every type the hand table lacks (review it like the hand table;
a change there shows in ``git diff``).

    python scripts/support_matrix.py                 # every type (about 15 minutes here)
    python scripts/support_matrix.py llama bamba     # some types, printed only
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time, traceback, warnings
resource.setrlimit(resource.RLIMIT_AS, (8 * 2**30, 8 * 2**30))
warnings.filterwarnings("ignore")
import torch
torch.set_num_threads(1)
from transformers.utils import logging as hf_logging
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
from uniterp import StandardizedTransformer, UniterpError
from uniterp._discovered import DISCOVERED
from uniterp.testing import tiny_model_path

# every type the hand table lacks is discovered afresh, so the rows written back are current
DISCOVERED.clear()

def read_internals(model):
    # read every located internal value on every layer: site -> layers whose read failed, with the error
    from uniterp._internals import INTERNAL_SITES
    failed = {}
    for site in INTERNAL_SITES:
        for layer in range(model.num_layers):
            if model.binding.locator(site, layer) is None:
                continue
            try:
                with torch.no_grad(), model.trace(["The Eiffel Tower is in the city of", "hello world"]):
                    getattr(model, site)[layer].save()
            except Exception as e:
                failed.setdefault(site, {})[str(layer)] = short(e)
    for layer in sorted(model.mixer_states.located()[0]):
        try:
            with torch.no_grad(), model.trace(["The Eiffel Tower is in the city of", "hello world"]):
                model.mixer_states[layer].save()
        except Exception as e:
            failed.setdefault("mixer_states", {})[str(layer)] = short(e)
    return failed

def emit(rec):
    print("@@" + json.dumps(rec), flush=True)

def short(e):
    return f"{type(e).__name__}: {e}".replace("\n", " ")[:500]

for model_type in sys.argv[1:]:
    rec = {"type": model_type}
    start = time.time()
    try:
        path = tiny_model_path(model_type)
    except Exception as e:
        rec.update(status="not buildable", reason=short(e))
        emit(rec)
        continue
    try:
        model = StandardizedTransformer(path)
    except UniterpError as e:
        rec.update(status="refused", reason=short(e))
        emit(rec)
        continue
    except Exception as e:
        rec.update(status="error", reason=short(e), trace=traceback.format_exc()[-800:])
        emit(rec)
        continue
    try:
        result = model.check()
        report = model.support()
        rec["checks"] = [[i.name, i.status, i.detail] for i in result.items]
        rec["support"] = report.to_dict()["values"]
        rec["block"] = report.block
        rec["discovered"] = model.binding.source in ("discovered", "generated")
        rec["source"] = model.binding.source
        if model.binding.source == "discovered" and result.passed:
            rec["row"] = model.binding.spec.to_source()
        rec["layers"] = model.num_layers
        rec["streams"] = model.binding.layout.layers[-1]["layers_output"].n_streams
        rec["status"] = "exact" if result.passed else "check failed"
        rec["internals_read"] = read_internals(model)
        rec["copies"] = sorted({
            site for layer in model.binding.layout.layers for site, loc in layer.items() if loc.clone
        })
        if not result.passed:
            rec["reason"] = result.summary()
    except Exception as e:
        rec.update(status="error", reason=short(e), trace=traceback.format_exc()[-800:])
        emit(rec)
        continue
    try:
        with_probs = StandardizedTransformer(path, enable_attention_probs=True)
        entries = with_probs.binding.attention
        ok = [i for i, e in enumerate(entries) if not isinstance(e, str)]
        reasons = sorted({e for e in entries if isinstance(e, str)})
        rec["attention_probabilities"] = {"layers": ok, "reasons": reasons}
    except Exception as e:
        rec["attention_probabilities"] = {"layers": [], "reasons": [short(e)]}
    rec["seconds"] = round(time.time() - start, 1)
    emit(rec)
"""


def run_batch(types: list[str], timeout: int) -> list[dict]:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, *types], capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
        out = proc.stdout
        tail = proc.stderr[-400:]
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        tail = "timed out"
    records = [json.loads(line[2:]) for line in out.splitlines() if line.startswith("@@")]
    done = {r["type"] for r in records}
    missing = [t for t in types if t not in done]
    if missing and len(types) > 1:
        for t in missing:  # rerun the rest one by one to pin the culprit
            records += run_batch([t], timeout)
    elif missing:
        records.append({"type": missing[0], "status": "crashed", "reason": tail.replace("\n", " ")})
    return records


def _cell(value: dict, n: int) -> str:
    if value["available"] and not value["unavailable"] and not value["reason"]:
        return "✓"
    if value["layers"]:
        return f"{len(value['layers'])}/{n}"
    return "—"


def write_markdown(records: list[dict], path: Path, versions: dict[str, str]) -> None:
    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    buildable = [r for r in records if r["status"] != "not buildable"]
    exact = counts.get("exact", 0)
    lines = [
        "# Architecture support matrix",
        "",
        f"Generated by `python scripts/support_matrix.py` (`make coverage`) on {versions['date']} with "
        f"transformers {versions['transformers']}, nnsight {versions['nnsight']}, torch {versions['torch']}.",
        "",
        "Every `model_type` of transformers' causal-LM auto mapping: a tiny random model is built, loaded "
        "with `StandardizedTransformer` (load-time validation of every layer) and checked with "
        "`model.check()` (every value equals the native module's, logits equal a plain HF forward, "
        "`project_on_vocab(layers_output[-1]) == logits`, writes reach the output).",
        "",
        f"**{exact} of {len(buildable)} buildable types are exact ({100 * exact / max(1, len(buildable)):.1f} %)**; "
        + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()) if k != "exact")
        + ". A *refused* type raises uniterp's error at load with the reason shown; none is silently wrong.",
        "",
        "Columns: ✓ available on every layer, `k/n` on k of n layers (reasons below the table), — unavailable.",
        "",
        "Column *lens*: `project_on_vocab` (the logit lens) is exact, checked as "
        "`project_on_vocab(layers_output[-1]) == logits`; where it is not the model's readout it is "
        "unavailable with the reason below. A block marked *n streams* keeps n residual streams per "
        "token; its layer values are `(batch, seq, n, hidden)`.",
        "",
        "Columns *q/k/v*, *heads*, *neurons*, *states*: `queries`/`keys`/`values` (the attention kernel's "
        "inputs), `head_outputs`, `mlp_neurons` and `mixer_states` (the recurrent state of state-space and "
        "linear-attention mixers; see [Internals](internals.md)); reasons for the gaps are in the JSON "
        "file and `model.support()`.",
        "",
        "| model_type | status | layers | attn in | attn out | mlp in | mlp out | q/k/v | heads | neurons "
        "| states | attn probs | lens | block |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes: list[str] = []
    for r in sorted(records, key=lambda r: r["type"]):
        if r["status"] != "exact":
            lines.append(f"| {r['type']} | {r['status']} | | | | | | | | | | | | |")
            notes.append(f"- **{r['type']}** ({r['status']}): {r.get('reason', '')}")
            continue
        s = {k: dict(v) for k, v in r["support"].items()}
        n = r["layers"]
        for site, bad in r.get("internals_read", {}).items():  # located, but refused when read
            if site in s:
                s[site]["layers"] = [i for i in s[site]["layers"] if str(i) not in bad]
                s[site]["unavailable"] = {**s[site]["unavailable"], **bad}
        lens = s.get("project_on_vocab")
        streams = f", {r['streams']} streams" if r.get("streams", 1) > 1 else ""
        probs = r.get("attention_probabilities", {})
        p = f"{len(probs.get('layers', []))}/{n}" if probs.get("layers") else "—"
        if len(probs.get("layers", [])) == n:
            p = "✓"
        lines.append(
            f"| {r['type']} | exact{' (discovered)' if r.get('discovered') else ''} | {_cell(s['layers_output'], n)} "
            f"| {_cell(s['attentions_input'], n)} | {_cell(s['attentions_output'], n)} "
            f"| {_cell(s['mlps_input'], n)} | {_cell(s['mlps_output'], n)} "
            f"| {_cell(s['queries'], n) if 'queries' in s else '—'} "
            f"| {_cell(s['head_outputs'], n) if 'head_outputs' in s else '—'} "
            f"| {_cell(s['mlp_neurons'], n) if 'mlp_neurons' in s else '—'} "
            f"| {_cell(s['mixer_states'], n) if 'mixer_states' in s else '—'} | {p} "
            f"| {_cell(lens, n) if lens else '✓'} | {r.get('block', '')}{streams} |"
        )
        reasons = {
            reason
            for name in ("attentions_output", "mlps_output")
            for reason in s[name]["unavailable"].values()
        }
        reasons |= set(probs.get("reasons", [])) if p != "✓" else set()
        if lens and lens["reason"]:
            reasons.add(f"project_on_vocab: {lens['reason']}")
        if reasons:
            notes.append(f"- **{r['type']}**: " + "; ".join(sorted(reasons)))
    lines += ["", "## Reasons", ""] + notes + [""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("types", nargs="*", help="model types (default: all)")
    parser.add_argument("--batch", type=int, default=6, help="types per subprocess")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per subprocess")
    parser.add_argument("--jobs", type=int, default=2, help="subprocesses at once")
    args = parser.parse_args()

    import nnsight
    import torch
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    types = args.types or sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    records: list[dict] = []
    start = time.time()
    batches = [types[i : i + args.batch] for i in range(0, len(types), args.batch)]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for batch_records in pool.map(lambda batch: run_batch(batch, args.timeout), batches):
            for rec in batch_records:
                records.append(rec)
                print(f"{rec['type']:<28} {rec['status']:<14} {rec.get('reason', '')[:150]}", flush=True)
    print(f"{len(records)} types in {time.time() - start:.0f}s")
    if args.types:
        return
    versions = {
        "date": datetime.date.today().isoformat(),
        "transformers": transformers.__version__,
        "nnsight": getattr(nnsight, "__version__", "?"),
        "torch": torch.__version__,
    }
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "support-matrix.json").write_text(
        json.dumps({"versions": versions, "records": records}, indent=1)
    )
    write_markdown(records, docs / "support-matrix.md", versions)
    write_generated_rows(records, ROOT / "src" / "uniterp" / "_discovered.py", versions)


def write_generated_rows(records: list[dict], path: Path, versions: dict[str, str]) -> None:
    """``uniterp._discovered``: the discovered row of every type the hand table lacks and that builds."""
    rows = sorted((r["type"], r["row"]) for r in records if r.get("row"))
    head = path.read_text().split("DISCOVERED: dict[str, ArchitectureSpec] = {")[0]
    body = "".join(f"    {t!r}: {row},\n" for t, row in rows)
    path.write_text(
        head
        + "DISCOVERED: dict[str, ArchitectureSpec] = {\n"
        + f"    # {len(rows)} rows, transformers {versions['transformers']}\n"
        + body
        + "}\n"
    )


if __name__ == "__main__":
    main()
