"""One way for every command-line entry point to report bad input: a message, not a traceback."""

from __future__ import annotations

import sys
from typing import Any, Callable

from .config import ConfigError


def run_cli(main: Callable[[], Any]) -> None:
    """Run ``main``; turn the errors bad input raises into a one-line message and exit status 1.

    Config errors, missing data (``FileNotFoundError``, e.g. DataNotFoundError) and bad values or
    checkpoints (``ValueError``, e.g. CheckpointError) say what was wrong and what to do.
    """
    try:
        main()
    except ConfigError as err:
        sys.exit(f"config error: {err}")
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
