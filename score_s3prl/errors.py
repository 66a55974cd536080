"""The one exception type for problems a user can fix (bad input, missing data, bad config).

The CLI prints a ``ScoreError`` as a single ``error: ...`` line instead of a traceback;
every message names the file or setting at fault and what is wrong with it.
"""


class ScoreError(Exception):
    """A user-facing error: bad input, missing file, wrong shape, bad config value."""
