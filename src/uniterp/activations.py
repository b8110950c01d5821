"""Residual-stream activations of one token per prompt, at chosen layers.

Example::

    >>> from uniterp.activations import get_token_activations, collect_token_activations_batched
    >>> acts = get_token_activations(model, ["The cat sat", "Hello"], layers=[2, 5])
    >>> acts.shape                                   # (n_layers, n_prompts, hidden)
    torch.Size([2, 2, 768])
    >>> acts = collect_token_activations_batched(model, many_prompts, batch_size=64,
    ...                                          layers=[5], out_dir="acts/")   # resumable

The forward pass stops right after the deepest requested layer, so asking for
early layers costs less than a full forward.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._errors import InputError
from ._fastpath import Read, fast_path_available, read_values, text_encoding
from ._tooling import as_layer_list, as_prompt_list, use_remote
from .prompts import progress_bar

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = [
    "collect_token_activations_batched",
    "get_token_activations",
    "load_token_activations",
    "save_safetensors",
]

logger = logging.getLogger("uniterp")

_MANIFEST = "manifest.json"
_FORMAT = "uniterp.token_activations/1"
_KEY = "activations"


def _check_idx(idx: Any) -> int:
    if idx is None:
        return -1
    if isinstance(idx, torch.Tensor) and idx.numel() == 1:
        idx = int(idx.item())
    if isinstance(idx, bool) or not isinstance(idx, int):
        raise InputError(f"idx must be an int token position, got {idx!r}")
    return idx


@torch.no_grad()
def get_token_activations(
    model: StandardizedTransformer,
    prompts: str | Sequence[str],
    layers: int | Sequence[int] | None = None,
    idx: int = -1,
    remote: bool | str = False,
) -> torch.Tensor:
    """``layers_output[l][:, idx]`` for each requested layer, in one trace.

    Example::

        >>> acts = get_token_activations(model, ["The cat sat", "Hi"], layers=[0, 3])
        >>> acts.shape                      # (n_layers, n_prompts, hidden)
        torch.Size([2, 2, 64])

    Positions count within each prompt's own tokens, whatever the padding: ``-1``
    is the last token of every prompt, ``0`` its first (after a BOS, if the
    tokenizer adds one, ``0`` is the BOS). The forward pass stops after the
    deepest requested layer.

    Args:
        model: The model.
        prompts: One prompt or a list (batched together, left-padded).
        layers: Layer indices (negative allowed; any order, returned in that
            order); default: every layer.
        idx: Token position; negative counts from each prompt's end.
        remote: Passed to nnsight's ``trace``.

    Returns:
        ``(n_layers, n_prompts, hidden)`` tensor on CPU, in the model's dtype.

    Raises:
        InputError: Empty prompts, or ``idx`` outside a prompt's tokens.
        LayerIndexError: A layer out of range.
    """
    texts = as_prompt_list(prompts)
    wanted = as_layer_list(model, layers)
    position = _check_idx(idx)
    use_remote(remote)
    order = sorted(set(wanted))
    fast = _fast_token_activations(model, texts, order, position, remote)
    if fast is not None:
        stacked, lengths_cpu = fast
    else:
        collected: list[torch.Tensor] = []
        with model.trace(texts, remote=remote) as tracer:
            mask = model.attention_mask
            lengths = mask.sum(dim=1)
            rows, columns = _token_columns(mask, position)
            lengths_cpu = lengths.cpu().save()
            for layer in order:
                hidden = model.layers_output[layer]
                collected.append(hidden[rows, columns.to(hidden.device)])
            stacked = torch.stack(collected).cpu().save()
            tracer.stop()
    shortest = int(lengths_cpu.min())
    if position >= shortest or position < -shortest:
        bad = int(lengths_cpu.argmin())
        raise InputError(
            f"idx={position} is outside prompt {bad} ({texts[bad]!r}), which has {shortest} tokens; "
            f"valid positions are -{shortest} to {shortest - 1}"
        )
    if wanted != order:
        stacked = stacked[[order.index(layer) for layer in wanted]]
    return stacked


def _token_columns(mask: torch.Tensor, position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch rows and the column of token ``position`` within each row's own tokens (any padding side)."""
    lengths = mask.sum(dim=1)
    # leading padding = positions before the first real token (0 with right padding)
    first = (mask.cumsum(dim=1) == 0).sum(dim=1)
    columns = first + position if position >= 0 else first + lengths + position
    columns = columns.clamp(0, mask.shape[1] - 1)
    return torch.arange(mask.shape[0], device=mask.device), columns


def _fast_token_activations(
    model: StandardizedTransformer, texts: list[str], order: list[int], position: int, remote: bool | str
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`get_token_activations`' values read with plain hooks (`uniterp._fastpath`), or ``None`` to trace."""
    binding = model.binding
    locators = [binding.locator("layers_output", layer) for layer in order]
    if not fast_path_available(model, locators, remote):
        return None
    encoding = text_encoding(model, texts)
    if encoding is None:
        return None
    mask = encoding["attention_mask"]
    rows, columns = _token_columns(mask, position)

    def pick(hidden: torch.Tensor) -> torch.Tensor:
        return hidden[rows.to(hidden.device), columns.to(hidden.device)]

    values, _ = read_values(model, encoding, {str(i): Read(loc, pick) for i, loc in enumerate(locators)})
    stacked = torch.stack([values[str(i)] for i in range(len(order))]).cpu()
    return stacked, mask.sum(dim=1)


def _prompts_hash(prompts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for prompt in prompts:
        data = prompt.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def _manifest(
    model: StandardizedTransformer, prompts: Sequence[str], layers: list[int], idx: int, batch_size: int
) -> dict[str, Any]:
    config = model.text_config
    return {
        "format": _FORMAT,
        "model_type": model.model_type,
        "model_name": str(getattr(config, "_name_or_path", "") or ""),
        "hidden_size": model.hidden_size,
        "layers": layers,
        "idx": idx,
        "batch_size": batch_size,
        "n_prompts": len(prompts),
        "n_batches": (len(prompts) + batch_size - 1) // batch_size,
        "prompts_sha256": _prompts_hash(prompts),
    }


def _batch_file(out_dir: Path, index: int) -> Path:
    return out_dir / f"batch_{index:06d}.safetensors"


def _prepare_dir(out_dir: Path, manifest: dict[str, Any], resume: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / _MANIFEST
    existing_batches = sorted(out_dir.glob("batch_*.safetensors"))
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"{path} is not a readable uniterp manifest ({error})") from error
        differ = {k: (old.get(k), v) for k, v in manifest.items() if old.get(k) != v}
        if differ:
            details = "; ".join(f"{k}: directory has {a!r}, this call {b!r}" for k, (a, b) in differ.items())
            raise InputError(
                f"{out_dir} holds activations of a different run ({details}). "
                "Use another out_dir or delete this one."
            )
    elif existing_batches:
        raise InputError(
            f"{out_dir} holds batch files but no {_MANIFEST}; refusing to mix them with this run. "
            "Use another out_dir or delete those files."
        )
    if not resume:
        for old_file in existing_batches:
            old_file.unlink()
    _write_atomic(path, json.dumps(manifest, indent=2).encode("utf-8"))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_safetensors(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Write ``tensors`` to a safetensors file, atomically, with a new file's usual permissions.

    Example::

        >>> save_safetensors("acts.safetensors", {"activations": acts}, {"layers": "[2, 5]"})

    The safetensors library creates files readable by their owner only (mode
    0600); the file written here gets ``0666`` minus the umask (``0644`` for the
    common umask 022), like any file a program creates. The data go to
    ``path + ".tmp"`` first and replace ``path`` in one step, so an
    interrupted write never leaves a half-written file under the final name.

    Args:
        path: The file to write.
        tensors: Name -> tensor (made contiguous).
        metadata: String -> string metadata stored in the header.
    """
    from safetensors.torch import save_file

    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, target)


def _save_batch(path: Path, tensor: torch.Tensor, meta: dict[str, str]) -> None:
    save_safetensors(path, {_KEY: tensor}, meta)


def _damaged(path: Path, what: str) -> InputError:
    return InputError(
        f"{path} is damaged ({what}); it was probably cut off by an interrupted run or overwritten. "
        f"Delete {path.name} and rerun collect_token_activations_batched with the same arguments to "
        "recompute that batch, or pass resume=False to recompute every batch"
    )


def _load_batch(path: Path, shape: tuple[int, int, int | None] | None = None, load: bool = True) -> Any:
    """The ``(n_layers, batch, hidden)`` tensor of one batch file, or `InputError` if it is damaged.

    Args:
        path: The batch file.
        shape: ``(n_layers, batch, hidden)`` as the run's manifest implies, checked
            when given (``hidden`` is the last dimension; models with several
            residual streams have a streams dimension before it).
        load: Read the tensor; when false only the header and the file size
            are checked (safetensors refuses a file shorter than its header
            says) and ``None`` is returned.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = list(handle.keys())
            if _KEY not in keys:
                raise _damaged(path, f"no tensor {_KEY!r}; it holds {sorted(keys)}")
            found = tuple(handle.get_slice(_KEY).get_shape())
            tensor = handle.get_tensor(_KEY) if load else None
    except InputError:
        raise
    except Exception as error:  # noqa: BLE001 - safetensors raises its own (Rust) error types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _damaged(path, f"not a readable safetensors file: {first}") from error
    if shape is not None:
        n_layers, rows, hidden = shape
        fits = len(found) >= 3 and found[:2] == (n_layers, rows)
        if not fits or (hidden is not None and found[-1] != hidden):
            raise _damaged(
                path,
                f"{_KEY!r} has shape {found}; the manifest implies "
                f"(n_layers, batch, ..., hidden) = ({n_layers}, {rows}, ..., {hidden})",
            )
    return tensor


def collect_token_activations_batched(
    model: StandardizedTransformer,
    prompts: Sequence[str],
    batch_size: int,
    layers: int | Sequence[int] | None = None,
    idx: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
    tqdm: bool | Callable[..., Any] | None = None,
    remote: bool | str = False,
    return_activations: bool = True,
) -> torch.Tensor | None:
    """`get_token_activations` over many prompts, batch by batch, optionally streamed to disk.

    Example::

        >>> acts = collect_token_activations_batched(model, prompts, batch_size=32, layers=[4])
        >>> acts.shape                                   # (n_layers, n_prompts, hidden)
        >>> collect_token_activations_batched(model, prompts, 32, layers=[4], out_dir="acts",
        ...                                   return_activations=False)    # memory: one batch
        >>> acts = load_token_activations("acts")

    With ``out_dir``, batch ``i`` is written to ``batch_{i:06d}.safetensors``
    (tensor ``"activations"``, ``(n_layers, batch, hidden)``) next to a
    ``manifest.json`` (model type and name, layers, idx, batch size, prompt
    count and a SHA-256 of the prompts). With ``resume`` a batch whose file
    exists is not recomputed; a directory whose manifest differs from this call
    is refused. Files are written atomically, so an interrupted run resumes
    cleanly. Streaming works with ``remote`` too (files are written locally).

    Args:
        model: The model.
        prompts: Prompts (a list of strings).
        batch_size: Prompts per forward pass.
        layers: Layer indices (default: all).
        idx: Token position within each prompt (default ``-1``, the last token).
        out_dir: Folder to stream batches into (created if needed).
        resume: Skip batches already on disk; when false, existing batch files of
            a matching run are deleted and recomputed.
        tqdm: ``None`` (default): a progress bar when there is more than one
            batch; ``True``: always; ``False``: never; or a tqdm-like class.
        remote: Passed to nnsight's ``trace``.
        return_activations: Return the concatenated tensor; with ``out_dir`` and
            ``False`` nothing is kept in memory beyond one batch.

    Returns:
        ``(n_layers, n_prompts, hidden)`` on CPU, or ``None`` when
        ``return_activations`` is false.

    Raises:
        InputError: Empty prompts, bad ``batch_size``, a mismatching ``out_dir``,
            a damaged batch file on resume (the message names it), or
            ``return_activations=False`` without ``out_dir``.
    """
    texts = as_prompt_list(prompts)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    if not return_activations and out_dir is None:
        raise InputError("return_activations=False needs out_dir=, or the activations are lost")
    wanted = as_layer_list(model, layers)
    position = _check_idx(idx)
    folder = Path(out_dir) if out_dir is not None else None
    if folder is not None:
        _prepare_dir(folder, _manifest(model, texts, wanted, position, batch_size), resume)
    chunks: list[torch.Tensor] = []
    n_batches = (len(texts) + batch_size - 1) // batch_size
    with progress_bar(tqdm, n_batches, "activations") as bar:
        for index in range(n_batches):
            batch = texts[index * batch_size : (index + 1) * batch_size]
            path = _batch_file(folder, index) if folder is not None else None
            if path is not None and resume and path.exists():
                logger.debug("uniterp: batch %d already in %s; skipped", index, folder)
                stored = _load_batch(
                    path, (len(wanted), len(batch), model.hidden_size), load=return_activations
                )
                if return_activations:
                    chunks.append(stored)
                bar.update(1)
                continue
            acts = get_token_activations(model, batch, layers=wanted, idx=position, remote=remote)
            if path is not None:
                _save_batch(path, acts, {"batch_index": str(index), "first_prompt": str(index * batch_size)})
            if return_activations:
                chunks.append(acts)
            bar.update(1)
    if not return_activations:
        return None
    return torch.cat(chunks, dim=1)


def load_token_activations(out_dir: str | os.PathLike[str]) -> torch.Tensor:
    """Concatenate the batches `collect_token_activations_batched` streamed to ``out_dir``.

    Example::

        >>> acts = load_token_activations("acts")       # (n_layers, n_prompts, hidden)

    Raises:
        InputError: No manifest, batches are missing (an unfinished run), or a
            batch file is damaged (the message names it and the fix).
    """
    folder = Path(out_dir)
    path = folder / _MANIFEST
    if not path.exists():
        raise InputError(f"{folder} has no {_MANIFEST}; not a collect_token_activations_batched folder")
    manifest = json.loads(path.read_text())
    files = [_batch_file(folder, i) for i in range(int(manifest["n_batches"]))]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise InputError(
            f"{folder} is incomplete: missing {len(missing)} batch files (first: {missing[0]}); "
            "rerun collect_token_activations_batched with the same arguments to finish it"
        )
    n_prompts, step = int(manifest["n_prompts"]), int(manifest["batch_size"])
    n_layers, hidden = len(manifest["layers"]), manifest.get("hidden_size")
    return torch.cat(
        [_load_batch(f, (n_layers, min(step, n_prompts - i * step), hidden)) for i, f in enumerate(files)],
        dim=1,
    )
