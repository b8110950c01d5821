"""The ``uniterp`` command's commands: loading a model, printing and writing what each command makes.

Imported when a command runs (``uniterp.cli`` parses arguments without it), so
torch, transformers and nnsight load only then.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from .cli import EXIT_FAILED, EXIT_OK, CommandError

logger = logging.getLogger("uniterp")


# -- argument checks before anything heavy runs --------------------------------------------


def _check_writable(path: str, option: str) -> None:
    """Refuse an output path that cannot be written, before the model is loaded.

    Missing folders are fine (they are created) as long as the nearest existing
    one is a writable folder.
    """
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(full):
        raise CommandError(f"{option} {path!r} is a folder; give a file name")
    if os.path.exists(full) and not os.access(full, os.W_OK):
        raise CommandError(f"{option} {path!r} exists and is not writable")
    folder = os.path.dirname(full)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise CommandError(f"{option} {path!r}: {folder!r} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {path!r}: the folder {folder!r} is not writable")


def _check_top_k(k: int, model: Any) -> int:
    if k > model.vocab_size:
        raise CommandError(
            f"--top-k {k} is larger than the vocabulary of {model.vocab_size} tokens; give at most "
            f"{model.vocab_size}"
        )
    return k


def cli_wording(text: str) -> str:
    """uniterp's messages name Python arguments; on the command line, name the flag instead."""
    return text.replace(
        "load with enable_attention_probs=True",
        "pass --attention-probs (in Python: enable_attention_probs=True)",
    ).replace(
        "StandardizedTransformer(..., enable_attention_probs=True)",
        "--attention-probs (in Python: StandardizedTransformer(..., enable_attention_probs=True))",
    )


# -- loading ----------------------------------------------------------------------------

logger = logging.getLogger("uniterp")


def _looks_like_path(name: str) -> bool:
    if name.startswith((".", "/", "~")) or "\\" in name or name.endswith("/"):
        return True
    return name.count("/") > 1


def _quiet_libraries() -> None:
    """Keep third-party progress bars and chatter out of the command's output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def _model_source(name: str) -> str:
    """The folder or Hub id to load for MODEL, or a `CommandError` (no heavy imports)."""
    from .tiny import TINY_MODEL_NAME, resolve_model_name

    if name == TINY_MODEL_NAME:
        return resolve_model_name(name)
    source = os.path.expanduser(name)
    if os.path.exists(source):
        if not os.path.isdir(source):
            raise CommandError(
                f"{name!r} is a file; MODEL must be a model folder, a Hub id or {TINY_MODEL_NAME!r}"
            )
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise CommandError(f"{name!r} holds no config.json: not a HuggingFace model folder")
    elif _looks_like_path(name):
        raise CommandError(f"no model folder at {name!r}")
    return source


def _load_model(args: argparse.Namespace) -> Any:
    """The `StandardizedTransformer` for ``args.model``, or a `CommandError`."""
    from .tiny import TINY_MODEL_NAME

    name = args.model
    source = _model_source(name)
    _quiet_libraries()
    kwargs: dict[str, Any] = {}
    if args.dtype is not None:
        import torch

        kwargs["dtype"] = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    if args.device is not None:
        kwargs["device_map"] = args.device
    if args.trust_remote_code:
        kwargs["trust_remote_code"] = True
    if getattr(args, "attention_probs", False):
        kwargs["enable_attention_probs"] = True
    logger.info(
        "uniterp: loading %s from %s (%s)",
        name,
        source,
        ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "default options",
    )
    start = time.perf_counter()
    from ._model import StandardizedTransformer

    try:
        model = StandardizedTransformer(source, **kwargs)
    except (OSError, ValueError) as error:
        from ._errors import UniterpError

        if isinstance(error, UniterpError):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = ""
        if isinstance(error, OSError) and not os.path.isdir(source):
            hint = f" (no local folder by that name; offline, use a local folder or {TINY_MODEL_NAME!r})"
        raise CommandError(f"cannot load model {name!r}: {first}{hint}") from error
    logger.info(
        "uniterp: loaded %s in %.1fs: %s, %d layers, hidden %s, vocabulary %d, dtype %s, device %s",
        name,
        time.perf_counter() - start,
        model.model_type,
        model.num_layers,
        model.hidden_size,
        model.vocab_size,
        model.dtype,
        model.device,
    )
    return model


def _label(args: argparse.Namespace, model: Any) -> str:
    return f"{args.model} ({model.model_type}, {model.num_layers} layers)"


# -- output helpers -----------------------------------------------------------------------


def _token_text(tokenizer: Any, token_id: int) -> str:
    """A token as a quoted string with newlines visible: ``' Paris'``, ``'\\n'``."""
    return repr(tokenizer.decode([int(token_id)]))


def _format_top_table(ids: Any, probs: Any, tokenizer: Any, layers: Sequence[int]) -> str:
    """One line per layer: ``layer  'tok' 0.93  'tok' 0.02 ...``; ``ids``/``probs`` ``(n_layers, k)``."""
    lines = [f"{'layer':>5}  top tokens (probability)"]
    for row, layer in enumerate(layers):
        cells = [f"{_token_text(tokenizer, i):<14} {float(p):.3f}" for i, p in zip(ids[row], probs[row])]
        lines.append(f"{layer:>5}  " + "  ".join(cells))
    return "\n".join(lines)


def _flatten_layers(values: list[list[int] | None] | None) -> list[int] | None:
    if values is None or any(v is None for v in values):
        return None
    flat = [layer for group in values for layer in group]  # type: ignore[union-attr]
    if not flat:
        raise CommandError("--layers: give at least one layer")
    return flat


def _layer_numbers(model: Any, layers: list[int] | None) -> list[int]:
    from ._tooling import as_layer_list

    return as_layer_list(model, layers, "--layers")


def _write_html(path: str, title: str, sections: list[tuple[str, Any]]) -> None:
    from .demo import write_report

    try:
        write_report(path, title, sections)
    except OSError as error:
        raise CommandError(f"cannot write {path!r}: {error.strerror or error}") from error
    print(f"wrote {path}")


# -- commands -------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    if not args.no_html:
        _check_writable(args.html, "--html")
    from .demo import run_demo

    return run_demo(html=None if args.no_html else args.html)


def _cmd_lens(args: argparse.Namespace) -> int:
    layers_arg = _flatten_layers(args.layers)
    if args.html:
        _check_writable(args.html, "--html")
    from .lens import logit_lens

    model = _load_model(args)
    layers = _layer_numbers(model, layers_arg)
    k = _check_top_k(args.top_k, model)
    top = logit_lens(model, args.prompt, layers=layers, top_k=k)
    print(f"logit lens of {args.prompt!r} on {_label(args, model)}: next token after the last position")
    print(_format_top_table(top.token_ids[0], top.probs[0], model.tokenizer, layers))
    if args.html:
        from ._tooling import tokenize
        from .display import plot_logit_lens, plot_topk_tokens

        ids = tokenize(model, [args.prompt])[0]
        grid = logit_lens(model, args.prompt, layers=layers, positions=list(range(len(ids))))[0]
        sections = [
            (
                "Top tokens per layer (last position)",
                plot_topk_tokens(grid[:, -1], model.tokenizer, k=k, layers=layers, title=args.prompt),
            ),
            (
                "Top token at every layer and position",
                plot_logit_lens(grid, model.tokenizer, tokens=ids, layers=layers, title=args.prompt),
            ),
        ]
        _write_html(args.html, f"Logit lens: {args.prompt}", sections)
    return EXIT_OK


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _cmd_patchscope(args: argparse.Namespace) -> int:
    layers_arg = _flatten_layers(args.layers)
    if args.html:
        _check_writable(args.html, "--html")
    from .patchscope import TargetPrompt, patchscope_lens, repeat_prompt

    target = repeat_prompt() if args.target is None else TargetPrompt(_unescape(args.target), args.index)
    if args.target is None and args.index != -1:
        target = TargetPrompt(target.prompt, args.index)
    model = _load_model(args)
    layers = _layer_numbers(model, layers_arg)
    k = _check_top_k(args.top_k, model)
    probs = patchscope_lens(model, args.source, target, layers=layers)[0]  # (n_layers, vocab)
    top = probs.topk(k, dim=-1)
    print(f"patchscope of {args.source!r} on {_label(args, model)}")
    print(f"target {target.prompt!r}, patched at token {target.index_to_patch}; next token of the target:")
    print(_format_top_table(top.indices, top.values, model.tokenizer, layers))
    if args.html:
        from .display import plot_topk_tokens

        fig = plot_topk_tokens(probs, model.tokenizer, k=k, layers=layers, title=args.source)
        _write_html(args.html, f"Patchscope: {args.source}", [("Decoded at each layer", fig)])
    return EXIT_OK


def _cmd_check(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    print(f"loading {args.model} ...", flush=True)
    model = _load_model(args)
    print(
        f"load-time validation passed on all {model.num_layers} layers "
        f"({time.perf_counter() - start:.1f}s): every standardized module located, "
        "tuple/tensor outputs and shapes fixed per layer"
    )
    print(repr(model))
    print("\nnumerical checks (model.check()):", flush=True)
    result = model.check()
    print(cli_wording(str(result)))
    if result.passed:
        print(f"\nPASSED: {args.model} is served exactly ({time.perf_counter() - start:.1f}s)")
        return EXIT_OK
    print(f"\nFAILED: {len(result.failures)} check(s) failed for {args.model}")
    return EXIT_FAILED


def _read_prompts(path: str) -> list[str]:
    if os.path.isdir(path):
        raise CommandError(f"{path!r} is a folder; give a text file with one prompt per line")
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        raise CommandError(f"no prompts file at {path!r}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise CommandError(f"cannot read {path!r}: {error}") from None
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise CommandError(f"{path!r} holds no prompts (one per line, blank lines are skipped)")
    return prompts


def _cmd_collect(args: argparse.Namespace) -> int:
    import hashlib
    import json

    prompts = _read_prompts(args.prompts)
    layers_arg = _flatten_layers(args.layers)
    _check_writable(args.out, "--out")
    model = _load_model(args)
    layers = _layer_numbers(model, layers_arg)
    from .activations import collect_token_activations_batched, save_safetensors

    acts = collect_token_activations_batched(
        model, prompts, args.batch_size, layers=layers, idx=args.idx, tqdm=False if args.no_progress else None
    )
    digest = hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()
    metadata = {
        "format": "uniterp.collect/1",
        "model": args.model,
        "model_type": model.model_type,
        "layers": json.dumps(layers),
        "idx": str(args.idx),
        "n_prompts": str(len(prompts)),
        "prompts_sha256": digest,
        "shape": "(n_layers, n_prompts, hidden)",
    }
    try:
        folder = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(folder, exist_ok=True)
        save_safetensors(args.out, {"activations": acts}, metadata)
    except OSError as error:
        raise CommandError(f"cannot write {args.out!r}: {error}") from error
    print(
        f"wrote {args.out}: 'activations' {tuple(acts.shape)} (n_layers, n_prompts, hidden), "
        f"{acts.dtype}, layers {layers}, token {args.idx}"
    )
    return EXIT_OK


def _cmd_support(args: argparse.Namespace) -> int:
    model = _load_model(args)
    support = getattr(model, "support", None)
    if support is None:
        raise CommandError("this version of uniterp has no model.support()", EXIT_FAILED)
    print(cli_wording(str(support())))
    return EXIT_OK


COMMANDS = {
    "demo": _cmd_demo,
    "lens": _cmd_lens,
    "patchscope": _cmd_patchscope,
    "check": _cmd_check,
    "collect": _cmd_collect,
    "support": _cmd_support,
}
