"""Downloading checkpoints (and the PR lexicon files) into s3prl's download cache, safely.

s3prl's own downloader (``s3prl.util.download``) has no timeout, does not check the HTTP
status (an error page is cached as the checkpoint and reused), and falls back to
``requests``, which cannot open ``file://``. :func:`fetch` keeps its cache layout (so files
it already downloaded are reused) and adds what a download needs:

* connect and read timeouts (a server that accepts and never answers is an error, not a hang)
  and a total deadline (a server that drips a byte now and then is one too);
* a size cap (:data:`MAX_BYTES`), checked against ``Content-Length`` before the body and
  while it arrives;
* redirects only within a scheme (and from http to https): never to ``ftp``, nor down to ``http``;
* the HTTP status checked (200 only) and the length checked against ``Content-Length``;
* the file written atomically and kept only if ``validate`` accepts it (e.g. it loads as a
  checkpoint); a cached file that ``validate`` refuses is fetched again;
* ``http``, ``https`` and ``file`` URLs; anything else is refused by name.
"""

from __future__ import annotations

import hashlib
import socket
import time
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
DEADLINE_S = 3600.0  # for the whole download: 1.2 GB (a Large model) needs 0.33 MB/s
MAX_BYTES = 5 * 10**9  # the largest file fetched: a Large model is 1.2 GB
CHUNK = 1 << 20


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
    deadline: float | None = None,
    max_bytes: int | None = None,
    what: str = "checkpoint",
) -> Path:
    """The cached file of ``url``, downloaded first if absent, refused or ``refresh``.

    Args:
        validate: raises (a ScoreError) unless the file is usable; runs before the file is
            cached, and on a cached copy before it is reused.
    Raises:
        DownloadError: one line naming the URL: bad scheme, no answer within ``timeout``,
            not done within ``deadline``, larger than ``max_bytes``, a redirect to another
            scheme, an HTTP error status, a truncated body, or a file ``validate`` refuses.
    ``timeout`` defaults to :data:`TIMEOUT_S` (seconds, for connecting and for each read),
    ``deadline`` to :data:`DEADLINE_S` (seconds, the whole download), ``max_bytes`` to
    :data:`MAX_BYTES`; ``what`` names the file in the messages ("checkpoint", "lexicon").
    """
    timeout = TIMEOUT_S if timeout is None else timeout
    deadline = DEADLINE_S if deadline is None else deadline
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
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
        _download(url, dest, validate, timeout, deadline, max_bytes)
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


class _SameSchemeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only within its scheme, or from http up to https (urllib alone follows
    http(s) to ftp, and https down to http)."""

    def http_error_302(self, req, fp, code, msg, headers):  # noqa: ANN001 - urllib's signature
        target = headers.get("location") or headers.get("uri")
        if target:
            new_url = urllib.parse.urljoin(req.full_url, target)
            old, new = urllib.parse.urlparse(req.full_url).scheme, urllib.parse.urlparse(new_url).scheme
            if new != old and (old, new) != ("http", "https"):
                raise ScoreError(f"redirected from {old} to {new} ({new_url}): refused for safety")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _download(url: str, dest: Path, validate: Callable[[Path], None] | None, timeout: float,
              deadline: float, max_bytes: int) -> None:
    end = time.monotonic() + deadline
    request = urllib.request.Request(url, headers={"User-Agent": f"score-s3prl/{__version__}"})
    opener = urllib.request.build_opener(_SameSchemeRedirects)
    with opener.open(request, timeout=timeout) as response:  # schemes checked; redirects too
        status = getattr(response, "status", None)
        if status is not None and urllib.parse.urlparse(response.geturl()).scheme in ("http", "https") \
                and status != 200:
            raise ScoreError(f"HTTP {status} {getattr(response, 'reason', '')}".strip())
        expected = response.headers.get("Content-Length")
        if expected is not None and expected.isdigit() and int(expected) > max_bytes:
            raise ScoreError(f"{int(expected)} bytes, more than the {max_bytes} a checkpoint may have")
        # read1: what has arrived, so a byte now and then cannot hold one read past the deadline
        read = getattr(response, "read1", response.read)
        with atomic_open(dest, "wb", validate=_checked(validate)) as handle:
            written = 0
            while chunk := read(CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise ScoreError(f"more than the {max_bytes} bytes a checkpoint may have")
                if time.monotonic() > end:
                    raise ScoreError(f"not done within {deadline:g} s ({written} bytes so far)")
                handle.write(chunk)
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
