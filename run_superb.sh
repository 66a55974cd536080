#!/usr/bin/env bash
# SUPERB ASR / PR / QbE, baseline vs SCORE: `./run_superb.sh <asr|pr|qbe|all|demo> [options]`.
# A thin wrapper around `score-s3prl superb` (score_s3prl/superb/cli.py); --help lists the options.
# The interpreter: $SCORE_S3PRL_PYTHON if set (tests pass their own), else `score-s3prl` on
# PATH, else this checkout's .venv (what `make` builds).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${SCORE_S3PRL_PYTHON:-}" ]]; then
    exec "$SCORE_S3PRL_PYTHON" -m score_s3prl.cli superb "$@"
elif command -v score-s3prl >/dev/null 2>&1; then
    exec score-s3prl superb "$@"
elif [[ -x "$here/.venv/bin/score-s3prl" ]]; then
    exec "$here/.venv/bin/score-s3prl" superb "$@"
else
    echo "error: score-s3prl not found on PATH nor in $here/.venv; run \`make venv\` (or pip install -e .)" >&2
    exit 127
fi
