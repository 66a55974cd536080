"""The one exception type for problems a user can fix (bad input, missing data, bad config).

The CLI prints a ``ScoreError`` as a single ``error: ...`` line instead of a traceback;
every message names the file or setting at fault and what is wrong with it.

:class:`ArgumentParser` is the parser every subcommand uses, so that a bad command line is
such an error too and every ``--help`` reads the same way (see the class).
"""

from __future__ import annotations

import argparse
import re


class ScoreError(Exception):
    """A user-facing error: bad input, missing file, wrong shape, bad config value."""


# ``code``, :role:`target` and `title <link>`_ / `text` (reStructuredText markup in docstrings)
_RST = re.compile(r":[a-z]+:`~?([^`]+)`|``([^`]+)``|`([^`<]+?)(?:\s*<[^>]*>)?`_{0,2}")


def plain_text(text: str | None) -> str | None:
    """``text`` with reStructuredText markup removed (``x`` -> x, :mod:`a.b` -> a.b), for
    help text taken from a docstring."""
    if text is None:
        return None
    return _RST.sub(lambda m: next(g for g in m.groups() if g is not None), text)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter: option help as plain text (:func:`plain_text`), with ``(default: X)``
    added when the option has a default worth stating (not None / False) and the help does not
    state one already."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = plain_text(action.help)
        if not text or text == argparse.SUPPRESS or "default" in text:
            return text
        if not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """:class:`HelpFormatter` keeping the description's own line breaks (a module docstring)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse as every ``score-s3prl`` subcommand uses it.

    - A bad command line is one ScoreError line (exit 2) instead of usage text plus an error
      line; ``-h`` still prints the full help.
    - No abbreviations (``allow_abbrev=False``): ``--step`` is an error, not ``--steps``.
    - Defaults appear in the help (:class:`HelpFormatter`); description and epilog are plain
      text (reStructuredText markup from docstrings removed).
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        for key in ("description", "epilog"):
            kwargs[key] = plain_text(kwargs.get(key))
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        raise ScoreError(f"{self.prog}: {message} (see {self.prog} -h)")
