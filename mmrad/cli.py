"""The ``mmrad`` command line: parse, load config, set up logging, make one library call.

The commands live in :mod:`mmrad.commands` (one module per group); importing those modules registers them here.
Heavy modules (torch, open_clip, transformers, evaluate) are imported inside the command functions so that
``mmrad --help`` starts fast. Exit codes: 0 success, 1 failure (one-line message; ``--debug`` shows the traceback),
2 usage error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from mmrad import __version__
from mmrad.commands import COMMANDS, data, inference, info, model  # noqa: F401 (the imports register the commands)

logger = logging.getLogger("mmrad")

# the order `mmrad --help` lists the commands in
_ORDER = ("info", "ingest", "train", "evaluate", "label", "zero-shot", "ground", "push", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmrad",
        description="Multimodal radiology: fine-tune image x report models, classify, ground and query scans.",
    )
    parser.add_argument("--version", action="version", version=f"mmrad {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in sorted(COMMANDS, key=_ORDER.index):
        COMMANDS[name](sub)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("mmrad")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _one_line(err: BaseException) -> str:
    from mmrad.errors import MMRadError, is_io_error, os_error_reason

    text = " ".join(str(err).split()) or type(err).__name__
    if is_io_error(err) and not isinstance(err, MMRadError):  # '[Errno 28] ...' -> 'PATH: no space left on device'
        names = [n for n in (getattr(err, "filename", None), getattr(err, "filename2", None)) if n is not None]
        text = f"{' -> '.join(map(str, names))}: {os_error_reason(err)}" if names else os_error_reason(err)
    return text if len(text) <= 500 else text[:497] + "..."


def main(argv: list[str] | None = None) -> int:
    """Run ``mmrad`` with ``argv`` (default: ``sys.argv[1:]``) and return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version (0) and usage errors (2)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    _setup_logging(args)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mmrad: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:
        if args.debug:
            raise
        print(f"mmrad: error: {_one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
