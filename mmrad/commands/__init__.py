"""The ``mmrad`` commands, one module per group; each registers its parser builders with :func:`command`.

:mod:`mmrad.cli` imports the group modules (which fills :data:`COMMANDS`), builds the parser and runs ``main``.
Heavy modules are imported inside the ``_run_*`` functions only, so ``mmrad --help`` starts fast. These modules are
the command line (split out of ``cli.py``): their ``_run_*`` functions print the results to stdout; the library
modules they call log instead and never print.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

# name -> function(subparsers) that adds the command; commands register themselves in their modules
COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {}


def command(name: str):
    def register(add: Callable[[argparse._SubParsersAction], None]):
        COMMANDS[name] = add
        return add

    return register
