#!/usr/bin/env bash
# SUPERB ASR / PR / QbE, baseline vs SCORE: `./run_superb.sh <asr|pr|qbe|all|demo> [options]`.
# A thin wrapper around `score-s3prl superb` (score_s3prl/superb/cli.py); --help lists the options.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if command -v score-s3prl >/dev/null 2>&1; then
    exec score-s3prl superb "$@"
elif [[ -x "$here/.venv/bin/score-s3prl" ]]; then
    exec "$here/.venv/bin/score-s3prl" superb "$@"
else
    echo "error: score-s3prl not found on PATH nor in $here/.venv; install the project (pip install -e .)" >&2
    exit 127
fi
