"""``score-s3prl fetch NAME [NAME ...]``: named base checkpoints into s3prl's download cache ahead.

For compute nodes without internet: run it where there is a connection, and ``--init NAME``
and stock s3prl's ``-u NAME`` (so ``run_superb.sh --upstream NAME``) then find the files in
s3prl's cache (``~/.cache/s3prl/download``) with no network. Every name is checked before any
download starts; each file comes through the checked downloader and is kept only if it loads as
a base model, and one already cached is checked and reused. Prints ``NAME<TAB>PATH`` per name.
"""

from __future__ import annotations

from .checkpoints.bases import BASE_URLS, base_url, fetch_base
from .errors import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="score-s3prl fetch", description=__doc__.split("\n\n")[0],
                            epilog=f"names: {', '.join(BASE_URLS)}")
    parser.add_argument("names", nargs="+", metavar="NAME", help="a named base (s3prl's hub entry name)")
    parser.add_argument("--refresh", action="store_true", help="download again even when cached")
    args = parser.parse_args(argv)
    for name in args.names:  # all checked before any download: a typo must not wait behind a gigabyte
        base_url(name)
    for name in dict.fromkeys(args.names):  # each once, in the order given
        print(f"{name}\t{fetch_base(name, refresh=args.refresh)}", flush=True)
    return 0
