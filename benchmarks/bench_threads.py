"""The probe's wall-clock and CPU time under three thread settings, on this machine.

    python benchmarks/bench_threads.py [--rounds 3] [--max-seconds S]

`score-s3prl probe` on the bundled test-other clips (11 utterances, 65 s) with a HuBERT Base-sized
model (random weights: the same computation as hubert_base, no download), each setting in its
own process, settings interleaved round by round (a shared machine's load then hits all alike):

- torch default: PyTorch's own thread count (one per core) and OpenMP's default waiting
  (spin, then sleep); what the probe did before score_s3prl.runtime;
- OMP_NUM_THREADS=1: one intra-op thread;
- ours: the score-s3prl CLI's defaults (score_s3prl/runtime.py: OMP_WAIT_POLICY=PASSIVE, one
  thread per usable CPU).

Prints per setting the median wall-clock and CPU (user + system) seconds over the rounds, the
wall-clock ratio to the torch default, and the load average around each run. Not a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AUDIO = REPO / "assets" / "librispeech-mini" / "test-other"
# the probe's own main without the CLI's thread defaults, for the two reference settings
DIRECT = "import sys; from score_s3prl.probe import main; sys.exit(main(sys.argv[1:]))"


def settings() -> dict[str, tuple[list[str], dict[str, str]]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "MKL_", "GOMP_"))}
    clean["PYTHONPATH"] = str(REPO)
    return {
        "torch default": ([sys.executable, "-c", DIRECT], clean),
        "OMP_NUM_THREADS=1": ([sys.executable, "-c", DIRECT], {**clean, "OMP_NUM_THREADS": "1"}),
        "ours (CLI defaults)": ([sys.executable, "-m", "score_s3prl.cli", "probe"], clean),
    }


def run_once(command: list[str], env: dict[str, str], args: list[str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, load averages before -> after) of one probe process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    subprocess.run([*command, *args], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, f"{load:.1f}->{os.getloadavg()[0]:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, help="cut each clip (a shorter benchmark)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from score_s3prl.checkpoints.hubert import random_hubert_state, write_converted
    from score_s3prl.runtime import usable_cpus

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "hubert_base_random.pt"
        write_converted(ckpt, **random_hubert_state())
        probe_args = ["--upstream", f"hubert_local={ckpt}", "--audio", str(AUDIO), "--out", str(Path(tmp) / "out"),
                      "--device", "cpu", "--no-progress"]
        if args.max_seconds:
            probe_args += ["--max-seconds", str(args.max_seconds)]
        print(f"machine: {os.cpu_count()} CPUs, {usable_cpus()} usable; probe of {AUDIO.relative_to(REPO)}, "
              f"HuBERT Base-sized random weights; {args.rounds} rounds", flush=True)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in settings()}
        for round_ in range(args.rounds):
            for name, (command, env) in settings().items():
                wall, cpu, load = run_once(command, env, probe_args)
                times[name].append((wall, cpu))
                print(f"round {round_ + 1}  {name:<20} wall {wall:7.1f} s  cpu {cpu:7.1f} s  load {load}", flush=True)
    reference = statistics.median(w for w, _ in times["torch default"])
    print(f"\n{'setting':<20} {'median wall':>12} {'median cpu':>11} {'wall / torch default':>21}")
    for name, values in times.items():
        wall, cpu = statistics.median(w for w, _ in values), statistics.median(c for _, c in values)
        print(f"{name:<20} {wall:10.1f} s {cpu:9.1f} s {wall / reference:20.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
