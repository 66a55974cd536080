"""The one exception type for problems a user can fix (bad input, missing data, bad config).

The CLI prints a ``ScoreError`` as a single ``error: ...`` line instead of a traceback;
every message names the file or setting at fault and what is wrong with it.
"""

from __future__ import annotations

import argparse


class ScoreError(Exception):
    """A user-facing error: bad input, missing file, wrong shape, bad config value."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad command line as one ScoreError line (exit 2) instead of usage
    text plus an error line; ``-h`` still prints the full help."""

    def error(self, message: str):  # type: ignore[override]
        raise ScoreError(f"{self.prog}: {message} (see {self.prog} -h)")
