"""What every command shares: one-line errors with exit status 2, never a traceback for bad input."""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable

from tuner.errors import ConfigError

USAGE_ERROR = 2
INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: the problem and where to look."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def plural(count: int, word: str) -> str:
    """"1 epoch", "3 epochs"."""
    return f"{count} {word}" + ("" if count == 1 else "s")


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run `main`, turning ConfigError into one line on stderr and exit status 2."""
    try:
        code = main(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = USAGE_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = INTERRUPTED
    # The interpreter's final garbage collections would walk every object torch, Ray and MLflow
    # created (2-3 s after a search); frozen objects are skipped, and the process ends anyway.
    gc.freeze()
    sys.exit(code or 0)
