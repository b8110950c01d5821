"""Every token's activations, streamed to safetensors shards, and read back through memory maps.

Example::

    >>> from uniterp.activation_store import collect_activations, load_activations
    >>> store = collect_activations(model, texts, out_dir="acts/", batch_size=32, max_seq_len=256,
    ...                             dtype=torch.bfloat16)          # resumable; a progress bar in tokens/s
    >>> len(store)                                                  # tokens stored (padding excluded)
    1000000
    >>> store.get("layers_output.5", 0, 4096).shape                 # (n_tokens, hidden)
    torch.Size([4096, 768])
    >>> for batch in store.iter_batches("layers_output.5", 8192):  # e.g. to train an SAE
    ...     ...

Unlike `uniterp.activations`, which keeps one token per prompt, this keeps every
token of every input (padding excluded), so memory is bounded by one shard, not by
the data: a shard buffer of ``shard_tokens`` tokens is filled batch by batch and
written when the next batch would not fit. Each shard holds one tensor per site,
``(n_tokens, *shape)`` (``(n_tokens, hidden)`` for the residual stream), and
``token_ids``, ``item_index`` (the input each token came from, counted from 0) and
``position`` (the token's position in its input). ``manifest.json`` records the
model, the sites and their shapes, the storage dtype, the settings, and per shard
its file, token and input counts and a SHA-256 of the inputs read so far, so an
interrupted run resumes after its last complete shard (the inputs are re-read up
to there and must hash the same).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ._aliases import SiteRef, read_ref
from ._errors import InputError
from ._fastpath import Read, fast_path_available, read_values
from ._layout import Locator
from ._probes import resolve_sites, unit_dims
from ._tooling import pad_left
from .activations import save_safetensors

if TYPE_CHECKING:
    from ._model import StandardizedTransformer

__all__ = ["ActivationStore", "collect_activations", "load_activations"]

logger = logging.getLogger("uniterp")

FORMAT = "uniterp.activation_store/1"
MANIFEST = "manifest.json"
#: Per-token index tensors stored next to the sites' values in every shard.
INDEX_KEYS = ("token_ids", "item_index", "position")


def _shard_name(index: int) -> str:
    return f"shard_{index:06d}.safetensors"


@dataclass(frozen=True)
class _Site:
    key: str
    ref: SiteRef
    loc: Locator | None
    pos_dim: int


def _store_sites(model: StandardizedTransformer, sites: str | Sequence[str]) -> list[_Site]:
    """The values to store, in forward order; each must have a token axis."""
    found = []
    binding = model.binding
    for site in resolve_sites(model, sites, writable=False, what="collect_activations sites"):
        ref = site.ref
        pos_dim = unit_dims(ref)[0]
        if ref.site in ("next_token_probs", "input_ids", "attention_mask") or pos_dim is None:
            raise InputError(
                f"collect_activations stores values per token; {site.key!r} has no token axis "
                "(store layers_output, mlp_neurons, head_outputs, ... instead)"
            )
        loc = None
        if ref.transform in ("same", "heads_to_seq"):
            if ref.site == "token_embeddings":
                loc = binding.layout.token_embeddings
            elif ref.layer is not None:
                loc = binding.locator(ref.site, ref.layer)
        found.append(_Site(site.key, ref, loc, pos_dim))
    return found


def _as_token_axis(site: _Site, value: torch.Tensor) -> torch.Tensor:
    """``value`` as the alias shows it, with the token axis second: ``(batch, seq, ...)``."""
    if site.ref.transform == "heads_to_seq":
        value = value.transpose(1, 2)
    return value if site.pos_dim == 1 else value.movedim(site.pos_dim, 1)


def _item_bytes(item: Any) -> bytes:
    if isinstance(item, str):
        return b"s" + item.encode("utf-8")
    return b"t" + torch.as_tensor(list(item), dtype=torch.int64).numpy().tobytes()


def _hash_items(digest: Any, items: Iterable[Any]) -> None:
    for item in items:
        data = _item_bytes(item)
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)


class ActivationStore:
    """A folder written by `collect_activations`, read through memory maps (safetensors ``safe_open``).

    Example::

        >>> store = load_activations("acts/")
        >>> store.sites                              # ['layers_output.0', ...]
        >>> x = store.get("layers_output.3", 1000, 2000)   # (1000, hidden): only those rows are read
        >>> ids = store.get("token_ids")                   # (n_tokens,)

    Attributes:
        folder: The folder.
        manifest: The parsed ``manifest.json``.
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.folder = Path(out_dir)
        path = self.folder / MANIFEST
        if not path.exists():
            raise InputError(f"{self.folder} has no {MANIFEST}; not a folder written by collect_activations")
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"{path} is not a readable manifest ({error})") from error
        if self.manifest.get("format") != FORMAT:
            raise InputError(f"{path} has format {self.manifest.get('format')!r}; expected {FORMAT!r}")
        self._starts = list(itertools.accumulate((s["n_tokens"] for s in self.shards), initial=0))

    @property
    def shards(self) -> list[dict[str, Any]]:
        """Per shard: ``file``, ``n_tokens``, ``first_item``, ``n_items``, ``items_sha256``."""
        return list(self.manifest["shards"])

    @property
    def sites(self) -> list[str]:
        """The stored values' keys, in forward order."""
        return [site["key"] for site in self.manifest["sites"]]

    @property
    def complete(self) -> bool:
        """Whether the collection ran to the end of its input."""
        return bool(self.manifest.get("complete"))

    def __len__(self) -> int:
        return self._starts[-1]

    def __repr__(self) -> str:
        return (
            f"<ActivationStore {self.folder}: {len(self)} tokens, {len(self.shards)} shards, "
            f"{len(self.sites)} sites, {self.manifest['dtype']}{'' if self.complete else ', incomplete'}>"
        )

    def _open(self, index: int) -> Any:
        from safetensors import safe_open

        path = self.folder / self.shards[index]["file"]
        try:
            return safe_open(str(path), framework="pt")
        except Exception as error:  # noqa: BLE001 - safetensors raises its own (Rust) error types
            raise InputError(
                f"{path} is missing or damaged ({error}); rerun collect_activations with resume=True to "
                "rewrite it"
            ) from error

    def _check_key(self, key: str) -> None:
        if key not in self.sites and key not in INDEX_KEYS:
            raise InputError(f"{key!r} is not stored here; stored: {self.sites + list(INDEX_KEYS)}")

    def shard(self, index: int) -> dict[str, torch.Tensor]:
        """Every tensor of shard ``index``: ``{key: (n_tokens, ...)}``."""
        if not 0 <= index < len(self.shards):
            raise InputError(f"shard {index} does not exist; the store has {len(self.shards)} shards")
        if self.shards[index]["file"] is None:  # inputs that gave no token
            return {}
        with self._open(index) as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}

    def get(self, key: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Tokens ``[start, stop)`` of ``key`` (a site or one of ``token_ids``, ``item_index``, ``position``).

        Only the shards and rows asked for are read. Returns ``(stop - start, *shape)``.
        """
        self._check_key(key)
        total = len(self)
        stop = total if stop is None else stop
        if not 0 <= start <= stop <= total:
            raise InputError(f"token range [{start}, {stop}) is outside the store's {total} tokens")
        pieces = []
        for index in range(len(self.shards)):
            first, last = self._starts[index], self._starts[index + 1]
            if last <= start or first >= stop:
                continue
            with self._open(index) as handle:
                pieces.append(handle.get_slice(key)[max(start, first) - first : min(stop, last) - first])
        if not pieces:
            return self._empty(key)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def _empty(self, key: str) -> torch.Tensor:
        for site in self.manifest["sites"]:
            if site["key"] == key:
                return torch.empty(0, *site["shape"], dtype=getattr(torch, self.manifest["dtype"]))
        return torch.empty(0, dtype=torch.int64)

    def iter_batches(self, key: str, batch_tokens: int) -> Iterator[torch.Tensor]:
        """``key`` in consecutive batches of ``batch_tokens`` tokens (the last may be shorter)."""
        if batch_tokens < 1:
            raise InputError(f"batch_tokens must be at least 1; got {batch_tokens}")
        for start in range(0, len(self), batch_tokens):
            yield self.get(key, start, min(start + batch_tokens, len(self)))


def load_activations(out_dir: str | os.PathLike[str]) -> ActivationStore:
    """The `ActivationStore` in ``out_dir`` (see `collect_activations`).

    Example::

        >>> store = load_activations("acts/")
        >>> store.get("layers_output.0", 0, 10).shape      # (10, hidden)
    """
    return ActivationStore(out_dir)


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"collect_activations: {name} must be a positive int; got {value!r}")
    return value


def _settings(
    model: StandardizedTransformer,
    sites: list[_Site],
    dtype: torch.dtype,
    batch_size: int,
    max_seq_len: int,
    shard_tokens: int,
    max_tokens: int | None,
) -> dict[str, Any]:
    config = model.text_config
    return {
        "format": FORMAT,
        "model_type": model.model_type,
        "model_name": str(getattr(config, "_name_or_path", "") or ""),
        "sites": [{"key": s.key, "name": s.ref.standard_name} for s in sites],
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": batch_size,
        "max_seq_len": max_seq_len,
        "shard_tokens": shard_tokens,
        "max_tokens": max_tokens,
    }


class _Progress:
    """Shards written so far, the inputs they cover and the hash of those inputs."""

    def __init__(self, folder: Path, settings: dict[str, Any], resume: bool) -> None:
        self.folder = folder
        self.settings = settings
        self.shards: list[dict[str, Any]] = []
        self.site_shapes: dict[str, list[int]] = {}
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / MANIFEST
        old: dict[str, Any] = {}
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as error:
                raise InputError(f"{path} is not a readable manifest ({error})") from error
            if old.get("format") != FORMAT:
                raise InputError(
                    f"{folder} holds {old.get('format')!r} files, not a collect_activations store; "
                    "use another out_dir"
                )
        if old and resume:
            mine = {k: v for k, v in settings.items() if k != "sites"}
            differ = {k: (old.get(k), v) for k, v in mine.items() if old.get(k) != v}
            old_sites = [{"key": s.get("key"), "name": s.get("name")} for s in old.get("sites", [])]
            if old_sites != settings["sites"]:
                differ["sites"] = (old_sites, settings["sites"])
            if differ:
                details = "; ".join(f"{k}: folder has {a!r}, this call {b!r}" for k, (a, b) in differ.items())
                raise InputError(
                    f"{folder} holds activations of a different collection ({details}). Use another out_dir, "
                    "or pass resume=False to start over"
                )
            self.site_shapes = {s["key"]: s["shape"] for s in old.get("sites", []) if "shape" in s}
            for shard in old.get("shards", []):
                if not self._intact(shard):
                    logger.info(
                        "uniterp: %s is missing or damaged; collecting again from there", shard["file"]
                    )
                    break
                self.shards.append(shard)
        else:
            for old_file in folder.glob("shard_*.safetensors"):
                old_file.unlink()
            path.unlink(missing_ok=True)

    def _intact(self, shard: dict[str, Any]) -> bool:
        from safetensors import safe_open

        if shard.get("file") is None:
            return shard.get("n_tokens") == 0
        try:
            with safe_open(str(self.folder / shard["file"]), framework="pt") as handle:
                return all(handle.get_slice(k).get_shape()[0] == shard["n_tokens"] for k in handle.keys())
        except Exception:  # noqa: BLE001 - a missing or cut-off file
            return False

    @property
    def items_done(self) -> int:
        return sum(s["n_items"] for s in self.shards)

    @property
    def tokens_done(self) -> int:
        return sum(s["n_tokens"] for s in self.shards)

    def write(self, complete: bool) -> None:
        sites = [{**s, "shape": self.site_shapes.get(s["key"])} for s in self.settings["sites"]]
        manifest = {
            **self.settings,
            "sites": sites,
            "shards": self.shards,
            "n_tokens": self.tokens_done,
            "n_items": self.items_done,
            "complete": complete,
        }
        path = self.folder / MANIFEST
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, path)


class _Buffer:
    """One shard's worth of tokens, preallocated once, filled batch by batch."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.tensors: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        count = next(iter(values.values())).shape[0]
        for key, value in values.items():
            buffer = self.tensors.get(key)
            if buffer is None or buffer.shape[0] < self.n + count:
                grown = torch.empty((max(self.capacity, self.n + count), *value.shape[1:]), dtype=value.dtype)
                if buffer is not None:
                    grown[: self.n] = buffer[: self.n]
                self.tensors[key] = buffer = grown
            buffer[self.n : self.n + count] = value
        self.n += count

    def take(self) -> dict[str, torch.Tensor]:
        return {key: tensor[: self.n] for key, tensor in self.tensors.items()}


def _encode(
    model: StandardizedTransformer, items: list[Any], max_seq_len: int, first: int
) -> list[list[int]]:
    """Token ids of each input (text through the tokenizer, as a trace encodes it), cut at ``max_seq_len``."""
    texts = [i for i, item in enumerate(items) if isinstance(item, str)]
    rows: list[list[int]] = [[] for _ in items]
    if texts:
        encoded = model.tokenizer([items[i] for i in texts])["input_ids"]
        for i, ids in zip(texts, encoded):
            rows[i] = list(ids)
    vocab = model.vocab_size
    for i, item in enumerate(items):
        if isinstance(item, str):
            continue
        if isinstance(item, torch.Tensor):
            item = item.tolist()
        if not isinstance(item, (list, tuple)) or any(
            isinstance(t, bool) or not isinstance(t, int) for t in item
        ):
            raise InputError(
                f"collect_activations: input {first + i} is a {type(item).__name__}; pass texts (str) or token "
                "ids (a list of ints or a 1-D integer tensor)"
            )
        bad = [t for t in item if not 0 <= t < vocab]
        if bad:
            raise InputError(
                f"collect_activations: input {first + i} holds token id {bad[0]}, outside the vocabulary of "
                f"{model.model_type} (valid: 0 to {vocab - 1})"
            )
        rows[i] = list(item)
    return [row[:max_seq_len] for row in rows]


def _batch_values(
    model: StandardizedTransformer, encoding: dict[str, torch.Tensor], sites: list[_Site], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Every site's value at every real (non-padding) token of the batch: ``{key: (n_tokens, ...)}`` on the CPU."""
    keep = encoding["attention_mask"].bool()

    def tokens(site: _Site) -> Callable[[torch.Tensor], torch.Tensor]:
        def pick(value: torch.Tensor) -> torch.Tensor:
            return _as_token_axis(site, value)[keep.to(value.device)].to(dtype)

        return pick

    if all(s.loc is not None for s in sites) and fast_path_available(model, [s.loc for s in sites]):
        found, _ = read_values(model, encoding, {s.key: Read(s.loc, tokens(s)) for s in sites})
        return {key: value.cpu() for key, value in found.items()}
    saved: dict[str, torch.Tensor] = {}
    with torch.no_grad(), model.trace(encoding) as tracer:
        for site in sites:
            saved[site.key] = tokens(site)(read_ref(model, site.ref)).cpu().save()
        tracer.stop()
    return dict(saved)


def collect_activations(
    model: StandardizedTransformer,
    data: Iterable[str] | Iterable[Sequence[int]],
    out_dir: str | os.PathLike[str],
    *,
    sites: str | Sequence[str] = "layers_output",
    batch_size: int = 32,
    max_seq_len: int = 512,
    shard_tokens: int = 1 << 16,
    dtype: torch.dtype | None = None,
    max_tokens: int | None = None,
    resume: bool = True,
    progress: bool | Callable[..., Any] | None = None,
) -> ActivationStore:
    """Every token's activations at ``sites``, streamed to safetensors shards in ``out_dir``.

    Example::

        >>> store = collect_activations(model, texts, "acts/", dtype=torch.bfloat16)  # every layer's output
        >>> store = collect_activations(model, token_lists, "acts/", sites=["layers_input.0", "mlp_neurons"],
        ...                             max_tokens=1_000_000, batch_size=64, max_seq_len=128)
        >>> store.get("layers_output.3", 0, 100).shape       # (100, hidden)

    Inputs are read in order, ``batch_size`` at a time (an iterator is never
    materialized), tokenized as a trace would (special tokens included), cut to
    ``max_seq_len`` tokens and left-padded; every real token's value at every
    site is kept, padding excluded. Values are read with plain hooks where they
    can be (`uniterp._fastpath`), else in a trace, and the forward stops after
    the last site. A shard is written (atomically) when the next batch would
    not fit in ``shard_tokens`` tokens, so a shard holds whole batches and
    memory stays at one shard, whatever the number of tokens. With ``resume``
    an interrupted collection continues after its last complete shard, with the
    same batches, so its values are those of an uninterrupted run.

    Args:
        model: The model.
        data: Texts, or token-id sequences (lists of ints or 1-D tensors); an
            input that gives no token is skipped (it still counts in ``item_index``).
        out_dir: The folder (created if needed).
        sites: Value names as `model.sites` takes them (standardized,
            TransformerLens or native), or a bare per-layer name for every layer;
            default every layer's ``layers_output``. Each needs a token axis.
        batch_size: Inputs per forward.
        max_seq_len: Tokens kept per input (the rest is dropped).
        shard_tokens: Tokens per shard (at most, unless one batch alone has more).
        dtype: Storage dtype (e.g. ``torch.bfloat16``); default the model's.
        max_tokens: Stop after exactly this many tokens (the last input may be cut).
        resume: Continue a collection found in ``out_dir`` (whose settings must
            equal this call's, and whose inputs must hash the same); ``False``
            deletes its shards and starts over.
        progress: ``None``/``True``: a tqdm bar counting tokens (with tokens/s);
            ``False``: none; or a tqdm-like class.

    Returns:
        The `ActivationStore` written.

    Raises:
        InputError: Bad arguments, a site without a token axis, an input that is
            neither text nor token ids, a token id outside the vocabulary, a
            folder holding another collection, or inputs that differ from those
            an interrupted collection read.
        UnavailableError: A site this model does not have (with the reason).
    """
    batch_size = _positive(batch_size, "batch_size")
    max_seq_len = _positive(max_seq_len, "max_seq_len")
    shard_tokens = _positive(shard_tokens, "shard_tokens")
    if max_tokens is not None:
        max_tokens = _positive(max_tokens, "max_tokens")
    if isinstance(data, (str, bytes)):
        raise InputError(
            "collect_activations: data must be an iterable of texts or token-id lists, not one string"
        )
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise InputError(f"collect_activations: dtype must be a floating torch dtype; got {dtype!r}")
    model.dispatch()
    store_dtype = dtype or next(model._module.parameters()).dtype
    sites_list = _store_sites(model, sites)
    settings = _settings(model, sites_list, store_dtype, batch_size, max_seq_len, shard_tokens, max_tokens)
    done = _Progress(Path(out_dir), settings, resume)
    items = iter(data)
    digest = hashlib.sha256()
    skipped = list(itertools.islice(items, done.items_done))
    _hash_items(digest, skipped)
    if len(skipped) < done.items_done or (
        done.shards and digest.hexdigest() != done.shards[-1]["items_sha256"]
    ):
        raise InputError(
            f"the inputs differ from those the collection in {out_dir} read (the first {done.items_done} inputs "
            "hash differently): pass the same data, or resume=False to start over"
        )
    del skipped
    bar = _bar(progress, max_tokens, done.tokens_done)
    buffer = _Buffer(shard_tokens)
    pending = {"first_item": done.items_done, "n_items": 0}
    tokens = done.tokens_done
    try:
        while max_tokens is None or tokens < max_tokens:
            batch = list(itertools.islice(items, batch_size))
            if not batch:
                break
            first = pending["first_item"] + pending["n_items"]
            rows = _encode(model, batch, max_seq_len, first)
            if max_tokens is not None:
                rows = _cut(rows, max_tokens - tokens)
            count = sum(len(row) for row in rows)
            if buffer.n and buffer.n + count > shard_tokens:
                _flush(done, buffer, pending, digest)
            _hash_items(digest, batch)
            pending["n_items"] += len(batch)
            if count:
                buffer.add(_batch_rows(model, rows, first, sites_list, store_dtype, done))
            tokens += count
            bar.update(count)
        if buffer.n or pending["n_items"]:
            _flush(done, buffer, pending, digest)
        done.write(complete=True)
    finally:
        bar.close()
    return ActivationStore(out_dir)


def _cut(rows: list[list[int]], left: int) -> list[list[int]]:
    out = []
    for row in rows:
        out.append(row[: max(0, left)])
        left -= len(out[-1])
    return out


def _batch_rows(
    model: StandardizedTransformer,
    rows: list[list[int]],
    first: int,
    sites: list[_Site],
    dtype: torch.dtype,
    done: _Progress,
) -> dict[str, torch.Tensor]:
    kept = [(i, row) for i, row in enumerate(rows) if row]
    encoding = pad_left(model, [row for _, row in kept])
    values = _batch_values(model, encoding, sites, dtype)
    for key, value in values.items():
        done.site_shapes.setdefault(key, list(value.shape[1:]))
    values["token_ids"] = torch.tensor([t for _, row in kept for t in row], dtype=torch.int32)
    values["item_index"] = torch.tensor([first + i for i, row in kept for _ in row], dtype=torch.int64)
    values["position"] = torch.tensor([p for _, row in kept for p in range(len(row))], dtype=torch.int32)
    return values


def _flush(done: _Progress, buffer: _Buffer, pending: dict[str, int], digest: Any) -> None:
    """Write the buffer as the next shard, then record it in the manifest."""
    index = len(done.shards)
    name = _shard_name(index)
    tensors = buffer.take()
    if buffer.n:
        save_safetensors(done.folder / name, tensors, {"format": FORMAT, "shard": str(index)})
    done.shards.append(
        {
            "file": name if buffer.n else None,
            "n_tokens": buffer.n,
            "first_item": pending["first_item"],
            "n_items": pending["n_items"],
            "items_sha256": digest.hexdigest(),
        }
    )
    done.write(complete=False)
    pending["first_item"] += pending["n_items"]
    pending["n_items"] = 0
    buffer.n = 0


def _bar(progress: bool | Callable[..., Any] | None, total: int | None, initial: int) -> Any:
    kwargs = {"total": total, "initial": initial, "desc": "activations", "unit": "tok", "unit_scale": True}
    if callable(progress):
        return progress(**kwargs)
    from tqdm.auto import tqdm

    return tqdm(**kwargs, disable=progress is False)
