"""The ``uniterp`` command line: the tools on any model, from a shell.

Example::

    $ uniterp demo                                        # offline tour, writes demo-output/report.html
    $ uniterp lens uniterp-tiny "The capital of France is" --top-k 3 --html lens.html
    $ uniterp patchscope uniterp-tiny "The capital of France"
    $ uniterp check gpt2                                  # exit status 1 when a check fails
    $ uniterp collect uniterp-tiny prompts.txt --layers 1 3 --out acts.safetensors
    $ uniterp support ./my-model

``MODEL`` is a Hub id, a local folder, or ``uniterp-tiny`` (the model shipped in
the package). Exit status: 0 on success, 1 when a check fails or uniterp cannot
serve the model, 2 for wrong arguments (including a model that cannot be
found). Errors are one short message; ``--debug`` shows the traceback.

Only the standard library is imported up front; torch, transformers and nnsight
load when a command needs a model.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_MODEL_HELP = "a Hub id, a local model folder, or 'uniterp-tiny' (the embedded model)"


class CommandError(Exception):
    """A failure reported as one line, with an exit status (2: the arguments, 1: the model)."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# -- argument parsing -----------------------------------------------------------------

#: Most tokens per layer a table shows; the Python API has no such limit.
MAX_TOP_K = 100


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends ``(default: X)`` where a default means something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" in text or "default" in text or default in (None, False, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def _layers_arg(text: str) -> list[int] | None:
    """``"all"``, ``"3"``, ``"-1"`` or ``"0,2,4"`` as a list of ints (``None`` = all)."""
    if text.strip().lower() == "all":
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid layer {text!r}: give integers (negative counts from the end), e.g. 0 2 -1 or 0,2,-1"
        ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _top_k_arg(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_TOP_K:
        raise argparse.ArgumentTypeError(
            f"{value} tokens per layer is more than a table can show (at most {MAX_TOP_K}); for more, "
            "use the Python API: logit_lens(model, prompt, top_k=K)"
        )
    return value


def _text_arg(text: str) -> str:
    """A prompt: refused when empty or only whitespace (nothing for the model to read)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty or only whitespace; give some text")
    return text


def _safetensors_path(text: str) -> str:
    if not text.lower().endswith(".safetensors"):
        suffix = os.path.splitext(text)[1] or "no extension"
        raise argparse.ArgumentTypeError(
            f"{text!r} ({suffix}): collect writes the safetensors format only; name the file "
            f"{os.path.splitext(text)[0] or 'acts'}.safetensors"
        )
    return text


def _common_options(top_level: bool) -> argparse.ArgumentParser:
    """``-v`` and ``--debug``, accepted before and after the command.

    On a subcommand the default is SUPPRESS, so an option given before the
    command is not reset by the subcommand's parser.
    """
    parser = argparse.ArgumentParser(add_help=False)
    default: Any = False if top_level else argparse.SUPPRESS
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="log what uniterp does (on stderr)"
    )
    parser.add_argument(
        "--debug", action="store_true", default=default, help="show tracebacks instead of short errors"
    )
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    group = parser.add_argument_group("loading")
    group.add_argument(
        "--dtype",
        choices=("auto", "float32", "float16", "bfloat16"),
        help="weights dtype (default: the checkpoint's)",
    )
    group.add_argument(
        "--device", help="device or device_map for the weights, e.g. cpu, cuda, auto (default: cpu)"
    )
    group.add_argument(
        "--trust-remote-code", action="store_true", help="allow the model's own code (off by default)"
    )


def _add_attention_probs_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--attention-probs",
        action="store_true",
        help="also locate and validate attention probabilities (loads the model with eager attention)",
    )


def _add_layers_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--layers", nargs="+", type=_layers_arg, metavar="L", help=help_text)


def _add_command(
    commands: Any, name: str, summary: str, description: str, common: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        parents=[common],
        formatter_class=_HelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``uniterp`` command.

    Example::

        >>> args = build_parser().parse_args(["lens", "uniterp-tiny", "Hello", "--top-k", "3"])
        >>> args.command, args.top_k
        ('lens', 3)
    """
    parser = argparse.ArgumentParser(
        prog="uniterp",
        description="Mechanistic-interpretability tools on any HuggingFace causal LM (uniterp).",
        epilog="MODEL is " + _MODEL_HELP + ". Run 'uniterp COMMAND --help' for a command's options.",
        parents=[_common_options(top_level=True)],
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    common = _common_options(top_level=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = _add_command(
        commands,
        "demo",
        "offline tour on the embedded model, with an HTML report",
        "Load the embedded model uniterp-tiny (no network), show ' Paris' emerging through the layers "
        "(logit lens), a patchscope readout and a steering before/after, run model.check(), and write "
        "an HTML report with the figures and what they show.",
        common,
    )
    demo.add_argument(
        "--html",
        default=os.path.join("demo-output", "report.html"),
        metavar="FILE",
        help="report file; its folder is created",
    )
    demo.add_argument("--no-html", action="store_true", help="print the summary only")

    lens = _add_command(
        commands,
        "lens",
        "logit lens: each layer's next-token guess",
        "Read every layer's residual stream at the prompt's last token through the final norm and "
        "the unembedding, and print each layer's most likely next tokens.",
        common,
    )
    _add_model_options(lens)
    lens.add_argument("prompt", metavar="PROMPT", type=_text_arg, help="the prompt")
    lens.add_argument(
        "--top-k", type=_top_k_arg, default=5, metavar="K", help=f"tokens per layer, 1 to {MAX_TOP_K}"
    )
    _add_layers_option(lens, "layers to read (default: all)")
    lens.add_argument("--html", metavar="FILE", help="also write plotly figures to this HTML file")

    scope = _add_command(
        commands,
        "patchscope",
        "decode a prompt's last-token state through a target",
        "Patch the source prompt's last-token state at each layer into a target prompt (by default "
        "the identity prompt 'king king\\n1135 1135\\nhello hello\\n?') and print the target's most "
        "likely next tokens: what that state encodes, layer by layer.",
        common,
    )
    _add_model_options(scope)
    scope.add_argument(
        "source", metavar="SOURCE", type=_text_arg, help="the prompt whose last-token states are decoded"
    )
    scope.add_argument(
        "--target",
        metavar="TEXT",
        type=_text_arg,
        help="target prompt; \\n is a newline (default: the identity prompt)",
    )
    scope.add_argument(
        "--index",
        type=int,
        default=-1,
        metavar="I",
        help="target token to patch, negative from the end (default: -1, the last)",
    )
    scope.add_argument(
        "--top-k", type=_top_k_arg, default=5, metavar="K", help=f"tokens per layer, 1 to {MAX_TOP_K}"
    )
    _add_layers_option(scope, "layers to patch (default: all)")
    scope.add_argument("--html", metavar="FILE", help="also write a plotly figure to this HTML file")

    check = _add_command(
        commands,
        "check",
        "load-time validation and numerical checks",
        "Load the model (every layer's modules located, output layouts and shapes fixed), then run "
        "model.check(): every value equals the native module's, logits equal a plain HF forward, the "
        "lens of the last layer equals the logits, writes reach the output. Exit status 1 when a "
        "check fails.",
        common,
    )
    _add_model_options(check)
    _add_attention_probs_option(check)

    collect = _add_command(
        commands,
        "collect",
        "save one token's activations for many prompts",
        "Run every prompt of a text file (one per line, blank lines skipped) and save the residual "
        "stream at one token position for the chosen layers, as a tensor 'activations' of shape "
        "(n_layers, n_prompts, hidden) in a safetensors file with the settings in its metadata.",
        common,
    )
    _add_model_options(collect)
    collect.add_argument("prompts", metavar="PROMPTS.txt", help="a text file, one prompt per line")
    _add_layers_option(collect, "layers to save (default: all)")
    collect.add_argument(
        "--out",
        required=True,
        type=_safetensors_path,
        metavar="FILE.safetensors",
        help="output file (safetensors format; its folder is created)",
    )
    collect.add_argument(
        "--idx", type=int, default=-1, help="token position in each prompt, negative from the end"
    )
    collect.add_argument(
        "--batch-size", type=_positive_int, default=32, metavar="N", help="prompts per forward"
    )
    collect.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (shown when there are several batches)",
    )

    support = _add_command(
        commands,
        "support",
        "which standardized values the model supports, and why",
        "Print every standardized value (layers_output, attentions_output, ...) with the layers "
        "where it is available and, where it is not, the reason.",
        common,
    )
    _add_model_options(support)
    _add_attention_probs_option(support)
    return parser


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


def _cli_wording(text: str) -> str:
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
    print(_cli_wording(str(result)))
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
    print(_cli_wording(str(support())))
    return EXIT_OK


_COMMANDS = {
    "demo": _cmd_demo,
    "lens": _cmd_lens,
    "patchscope": _cmd_patchscope,
    "check": _cmd_check,
    "collect": _cmd_collect,
    "support": _cmd_support,
}


def _exit_code(error: BaseException) -> int:
    from ._errors import InputError, LayerIndexError, OutsideTraceError, ShapeError

    return (
        EXIT_USAGE
        if isinstance(error, (InputError, LayerIndexError, ShapeError, OutsideTraceError))
        else EXIT_FAILED
    )


def _log_to_stderr(verbose: bool) -> logging.Handler | None:
    """With ``-v``, uniterp's log (INFO and up) goes to stderr; returns the handler to remove."""
    if not verbose:
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``uniterp`` command; returns the exit status.

    Example::

        >>> main(["lens", "uniterp-tiny", "The capital of France is", "--top-k", "3"])  # doctest: +SKIP
        0

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        0 on success, 1 when a check fails or the model cannot be served, 2 for
        wrong arguments.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"uniterp {version('uniterp')}")
        except PackageNotFoundError:
            print("uniterp (not installed)")
        return EXIT_OK
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(
            "uniterp: error: choose a command (demo, lens, patchscope, check, collect, support)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    handler = _log_to_stderr(args.verbose)
    previous_level = logger.level
    try:
        return _run(args)
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(previous_level)


def _run(args: argparse.Namespace) -> int:
    try:
        return _COMMANDS[args.command](args)
    except CommandError as error:
        if args.debug:
            raise
        print(f"uniterp {args.command}: error: {_cli_wording(str(error))}", file=sys.stderr)
        return error.code
    except KeyboardInterrupt:
        print(f"uniterp {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - a command line shows one line, not a traceback
        if args.debug:
            raise
        from ._errors import UniterpError

        if isinstance(error, UniterpError):
            print(f"uniterp {args.command}: error: {_cli_wording(str(error))}", file=sys.stderr)
            return _exit_code(error)
        if isinstance(error, ImportError):
            print(f"uniterp {args.command}: error: {error}", file=sys.stderr)
            return EXIT_FAILED
        print(
            f"uniterp {args.command}: unexpected {type(error).__name__}: {error} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
