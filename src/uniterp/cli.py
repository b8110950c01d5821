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
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

logger = logging.getLogger("uniterp")

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
    from ._cli_commands import COMMANDS
    from ._cli_commands import cli_wording as _cli_wording

    try:
        return COMMANDS[args.command](args)
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
