"""Downloading checkpoints (and the PR lexicon files) into s3prl's download cache, safely.

s3prl's own downloader (``s3prl.util.download``) has no timeout, does not check the HTTP
status (an error page is cached as the checkpoint and reused), and falls back to
``requests``, which cannot open ``file://``. :func:`fetch` keeps its cache layout (so files
it already downloaded are reused) and adds what a download needs:

* connect and read timeouts (a server that accepts and never answers is an error, not a hang);
* the HTTP status checked (200 only) and the length checked against ``Content-Length``;
* the file written atomically and kept only if ``validate`` accepts it (e.g. it loads as a
  checkpoint); a cached file that ``validate`` refuses is fetched again;
* ``http``, ``https`` and ``file`` URLs; anything else is refused by name.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from .. import __version__
from ..errors import ScoreError
from ..fileio import atomic_open

SCHEMES = ("http", "https", "file")
TIMEOUT_S = 60.0  # for the connection and for each read: a stalled server fails within this


class DownloadError(ScoreError):
    """A URL that could not be fetched into a usable file."""


def cache_path(url: str) -> Path:
    """Where s3prl caches ``url``: ``<s3prl download dir>/<sha256(url)>.<file name>``."""
    from s3prl.util import download

    name = Path(urllib.parse.urlparse(url).path).name or "download"
    return download.get_dir() / f"{hashlib.sha256(url.encode()).hexdigest()}.{name}"


def fetch(
    url: str,
    refresh: bool = False,
    validate: Callable[[Path], None] | None = None,
    timeout: float | None = None,
    what: str = "checkpoint",
) -> Path:
    """The cached file of ``url``, downloaded first if absent, refused or ``refresh``.

    Args:
        validate: raises (a ScoreError) unless the file is usable; runs before the file is
            cached, and on a cached copy before it is reused.
    Raises:
        DownloadError: one line naming the URL: bad scheme, no answer within ``timeout``,
            an HTTP error status, a truncated body, or a file ``validate`` refuses.
    ``timeout`` defaults to :data:`TIMEOUT_S` (seconds, for connecting and for each read);
    ``what`` names the file in the messages ("checkpoint", "lexicon").
    """
    timeout = TIMEOUT_S if timeout is None else timeout
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in SCHEMES:
        raise DownloadError(f"{url}: cannot download {what} (URL scheme {scheme or 'missing'!r}; "
                            f"expected {', '.join(SCHEMES)})")
    dest = cache_path(url)
    if dest.is_file() and not refresh:
        try:
            if validate is not None:
                validate(dest)
            return dest
        except ScoreError:
            dest.unlink(missing_ok=True)  # e.g. an error page an older downloader cached
    try:
        _download(url, dest, validate, timeout)
    except ScoreError as exc:
        raise DownloadError(f"{url}: cannot download {what} ({exc}); nothing was cached") from exc
    except (socket.timeout, TimeoutError):
        raise DownloadError(f"{url}: cannot download {what} (no answer within {timeout:g} s)") from None
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"{url}: cannot download {what} (HTTP {exc.code} {exc.reason})") from None
    except urllib.error.URLError as exc:
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
        if isinstance(exc.reason, (socket.timeout, TimeoutError)):
            reason = f"no answer within {timeout:g} s"
        raise DownloadError(f"{url}: cannot download {what} ({reason})") from None
    except (OSError, ValueError) as exc:
        raise DownloadError(f"{url}: cannot download {what} ({exc})") from None
    return dest


def _download(url: str, dest: Path, validate: Callable[[Path], None] | None, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": f"score-s3prl/{__version__}"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - schemes checked
        status = getattr(response, "status", None)
        if status is not None and urllib.parse.urlparse(response.geturl()).scheme in ("http", "https") \
                and status != 200:
            raise ScoreError(f"HTTP {status} {getattr(response, 'reason', '')}".strip())
        expected = response.headers.get("Content-Length")
        with atomic_open(dest, "wb", validate=_checked(validate)) as handle:
            shutil.copyfileobj(response, handle, 1 << 20)
            written = handle.tell()
            if expected is not None and expected.isdigit() and written != int(expected):
                raise ScoreError(f"truncated: {written} of {expected} bytes")


def _checked(validate: Callable[[Path], None] | None) -> Callable[[Path], None] | None:
    if validate is None:
        return None

    def run(path: Path) -> None:
        try:
            validate(path)
        except ScoreError as exc:
            # the message names the temporary file: say what it was instead
            text = str(exc).replace(str(path), "the downloaded file")
            raise ScoreError(text) from exc

    return run
