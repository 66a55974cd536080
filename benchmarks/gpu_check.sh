#!/usr/bin/env bash
# The GPU checks in one call, on a CUDA machine that keeps its own torch and reaches no registry.
#
#   benchmarks/gpu_check.sh prepare [WHEELS]   on a machine with pip: Python 3.12 manylinux wheels
#                                              of every locked package the GPU image lacks
#                                              (benchmarks/gpu_image_packages.txt) -> WHEELS (.whl)
#   benchmarks/gpu_check.sh run [WHEELS] [REPORT_DIR]
#                                              on the GPU machine: install those wheels with
#                                              --no-index --no-deps into a separate target on
#                                              PYTHONPATH (torch untouched), then the CUDA tests,
#                                              bench_softdtw, bench_augment and bench_finetune on
#                                              cuda; one report, report.md, in REPORT_DIR ($OUT or
#                                              gpu_report). Each step has its own time limit so the
#                                              whole run ends inside 8 minutes.
# GPU_CHECK_DEVICE=cpu runs the same steps on the CPU with small sizes: the dry run that proves
# the script (README "GPU check"). PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
action=${1:-}
wheels=${2:-.whl}

case "$action" in
prepare)
    mkdir -p "$wheels"
    "$PYTHON" - "$wheels" <<'PY' || exit 1
import re, subprocess, sys
wheels = sys.argv[1]
norm = lambda name: re.sub(r"[-_.]+", "-", name.strip().lower())
image = {norm(line) for line in open("benchmarks/gpu_image_packages.txt") if line.strip() and not line.startswith("#")}
pins = [line.split()[0] for line in open("requirements/lock.txt") if "==" in line and not line.startswith("#")]
missing = [pin for pin in pins if norm(pin.split("==")[0]) not in image]
platforms = [arg for n in (17, 24, 27, 28, 31, 34) for arg in ("--platform", f"manylinux_2_{n}_x86_64")]
platforms += ["--platform", "manylinux2014_x86_64", "--platform", "manylinux1_x86_64"]
for pin in missing:
    got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                          "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", wheels, pin],
                         stderr=subprocess.DEVNULL)
    if got.returncode:  # an sdist-only, pure-Python package: build its wheel here
        got = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, pin])
    if got.returncode:
        sys.exit(f"gpu_check prepare: no Python 3.12 wheel for {pin}")
print(f"gpu_check prepare: {len(missing)} wheels in {wheels} (of {len(pins)} locked packages)")
PY
    ;;
run)
    report_dir=${3:-${OUT:-gpu_report}}
    device=${GPU_CHECK_DEVICE:-cuda}
    mkdir -p "$report_dir"
    report="$report_dir/report.md"
    site=$(mktemp -d)
    export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
    {
        echo "# score-s3prl GPU check ($(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), device $device)"
        echo
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl \
            || { echo "wheel install failed"; exit 1; }
        "$PYTHON" -c "import sys, torch, torchaudio; print('python', sys.version.split()[0], '| torch', torch.__version__, '| torchaudio', torchaudio.__version__, '| cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
        "$PYTHON" -c "from score_s3prl.stack import require_loadable; require_loadable(); print('stack guard: ok')"
        if [[ $device == cuda ]]; then
            softdtw=(--rounds 5 --no-tslearn); augment=(--device cuda); finetune=(--device cuda --updates 10)
            tests=(tests/test_softdtw.py tests/test_augment.py)  # their CUDA cases run where CUDA is
        else  # the dry run: the same steps, small
            softdtw=(--rounds 1 --no-tslearn); augment=(--device cpu --repeats 1); finetune=(--device cpu --updates 1 --utterances 1)
            tests=(tests/test_stack.py -k "fix_command or this_stack")
        fi
        step() {  # step SECONDS TITLE COMMAND...: one section of the report, its own time limit
            local limit=$1 title=$2; shift 2
            echo; echo "## $title"; echo; echo '```'
            local start=$SECONDS
            timeout "$limit" "$@" 2>&1 | tail -n 40
            local code=${PIPESTATUS[0]}
            echo '```'; echo "exit $code, $((SECONDS - start)) s"
        }
        step 120 "CUDA tests" "$PYTHON" -m pytest -q -p no:cacheprovider "${tests[@]}"
        step 150 "bench_softdtw.py" "$PYTHON" benchmarks/bench_softdtw.py "${softdtw[@]}"
        step 60 "bench_augment.py" "$PYTHON" benchmarks/bench_augment.py "${augment[@]}"
        step 150 "bench_finetune.py" "$PYTHON" benchmarks/bench_finetune.py "${finetune[@]}"
    } 2>&1 | tee "$report"
    rm -rf "$site"
    echo "gpu_check: report in $report"
    ;;
*)
    sed -n '2,17p' "$0" >&2
    exit 2
    ;;
esac
