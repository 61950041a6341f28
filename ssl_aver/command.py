"""Running one command module (`add_arguments(parser)` + `run(args) -> int`) as `ssl-aver NAME`.

The `ssl-aver` CLI (ssl_aver.app.cli) runs every command through `run_command`; so does a
command module launched on its own (`accelerate launch -m pretext.build build ...`), which then
gets the same logging, one-line errors and exit codes without importing the app layer.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

from ssl_aver.errors import UserError


class CommandParser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def run_command(name: str, module_name: str, description: str, argv: Sequence[str]) -> int:
    """Import the command module `module_name`, parse `argv` with its arguments and run it;
    returns the exit code (2 with one line on stderr for an error the user can fix, 130 on Ctrl-C)."""
    # Our own modules report progress at INFO; libraries (accelerate, transformers) only warnings.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for package in ("ssl_aver", "pretext", "finetune"):
        logging.getLogger(package).setLevel(os.environ.get("SSL_AVER_LOG", "INFO"))
    if not sys.stderr.isatty():  # the Hub's and transformers' own tqdm bars would put \r-joined lines in a log
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    module = importlib.import_module(module_name)
    parser = CommandParser(prog=f"ssl-aver {name}", description=description)
    module.add_arguments(parser)
    args = parser.parse_args(list(argv))
    try:
        return int(module.run(args) or 0)
    except UserError as err:
        sys.stderr.write(f"ssl-aver {name}: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"ssl-aver {name}: interrupted\n")
        return 130
