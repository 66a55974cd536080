"""The guard at first use: a torchaudio that cannot load beside torch gives one line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from score_s3prl import stack

REPO = Path(__file__).resolve().parents[1]
UNDEFINED = "libtorchaudio.so: undefined symbol: torch_exception_get_what_without_backtrace"


@pytest.fixture(scope="module")
def broken_torchaudio(tmp_path_factory) -> dict[str, str]:
    """An environment whose `import torchaudio` raises what a torchaudio built for another torch raises."""
    shadow = tmp_path_factory.mktemp("shadow") / "torchaudio"
    shadow.mkdir()
    # as torchaudio 2.11.1 does: the loader's reason, wrapped in a message that names none
    (shadow / "__init__.py").write_text(
        f"try:\n    raise OSError({UNDEFINED!r})\n"
        "except OSError as e:\n    raise OSError('Could not load this library: libtorchaudio.so') from e\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow.parent), str(REPO)]),
            "SCORE_S3PRL_PYTHON": sys.executable}


def expected_line() -> str:
    torch_version = stack.installed_version("torch")
    return (f"error: torchaudio cannot be loaded ({UNDEFINED}); installed: torch {torch_version}, "
            f"torchaudio {stack.installed_version('torchaudio')}; fix: {stack.fix_command(torch_version)}")


@pytest.mark.slow  # a fresh interpreter per entry point
@pytest.mark.parametrize("command", [
    [sys.executable, "-m", "score_s3prl.cli", "finetune", "--help"],
    [sys.executable, "-m", "score_s3prl.cli", "qbe-score", "x.xml", "gt"],
    [sys.executable, "-m", "score_s3prl.run_downstream", "-m", "train"],  # the launcher
    [str(REPO / "run_superb.sh"), "demo"],
], ids=["finetune", "qbe-score", "launcher", "run_superb.sh"])
def test_entry_points_print_one_line(broken_torchaudio, command, tmp_path):
    result = subprocess.run(command, env=broken_torchaudio, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [expected_line()]


@pytest.mark.slow
def test_hub_entries_raise_one_line(broken_torchaudio, tmp_path):
    code = ("from score_s3prl.stack import StackError\n"
            "try:\n    import score_s3prl.hub\nexcept StackError as exc:\n    print('stopped:', exc)\n")
    result = subprocess.run([sys.executable, "-c", code], env=broken_torchaudio, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["stopped: " + expected_line().removeprefix("error: ")]


def test_fix_command_names_the_tested_pair():
    assert stack.fix_command("2.11.0+cu130") == "pip install 'torchaudio==2.11.0'"
    assert stack.fix_command("2.14.1") == "pip install 'torchaudio==2.11.1'"
    # an untested torch: go back to the locked pair
    assert stack.fix_command("2.12.0") == "pip install 'torch==2.11.0' 'torchaudio==2.11.0'"


def test_lock_holds_the_guarded_pair():
    lock = (REPO / "requirements" / "lock.txt").read_text().splitlines()
    assert f"torch=={stack.LOCKED_TORCH}" in lock and f"torchaudio=={stack.LOCKED_TORCHAUDIO}" in lock
    assert stack.TESTED_PAIRS[stack.LOCKED_TORCH] == stack.LOCKED_TORCHAUDIO
    pins = [line for line in lock if line and not line.startswith("#")]
    assert pins and all("==" in line for line in pins)  # every package exactly pinned


def test_this_stack_loads():
    stack.require_loadable()  # the tested environment itself passes the guard
