"""Files the project writes get the mode the umask gives, as files ``open`` creates: 0644 under
umask 022 (colleagues on shared storage can read the results), 0600 under 077."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from score_s3prl.checkpoints.hubert import tiny_hubert_state, write_converted
from score_s3prl.fileio import atomic_write_text, current_umask


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_the_process_umask(umask):
    assert current_umask() == umask


def test_results_csv_chart_checkpoint_and_text_files_get_the_umask_mode(umask, tmp_path):
    from score_s3prl.superb.lock import run_lock
    import dataclasses
    import json

    from score_s3prl.superb.results import ResultRow, assemble, plot_gains

    expected = 0o666 & ~umask
    rows = [ResultRow(task="pr", metric="per", upstream=name, checkpoint="", split="test", value=value,
                      lower_is_better=True, run_dir="r", git_commit="c", config_hash="h", relative_gain_pct=gain)
            for name, value, gain in (("hubert_base", 5.4, None), ("score_hubert", 5.2, 3.7))]
    # the rows as score stages record them in their run folders, assembled into the CSV twice: the
    # second write replaces the file, and the new one gets the umask mode too
    unit = tmp_path / "exp" / "pr" / "x"
    unit.mkdir(parents=True)
    (unit / "score-test.done.json").write_text(json.dumps({"outputs": {"rows": [dataclasses.asdict(r) for r in rows]}}))
    csv_path = tmp_path / "results" / "superb_results.csv"
    assemble(tmp_path / "exp", csv_path)
    assemble(tmp_path / "exp", csv_path)
    assert len(csv_path.read_text().splitlines()) == 1 + len(rows)  # replaced, not appended twice
    png = tmp_path / "results" / "superb_gains.png"
    plot_gains(rows, png)
    ckpt = tmp_path / "export.pt"
    write_converted(ckpt, **tiny_hubert_state(seed=0))
    text = tmp_path / "note.txt"
    atomic_write_text(text, "x\n")
    with run_lock(tmp_path / "run"):
        lock = next((tmp_path / "run").iterdir())
    for path in (csv_path, png, ckpt, text, lock):
        assert mode(path) == expected, f"{path.name}: {oct(mode(path))}, expected {oct(expected)}"


def test_the_training_log_plot_and_checkpoints_get_the_umask_mode(umask, tmp_path):
    from score_s3prl.train import append_log, plot_log

    expected = 0o666 & ~umask
    log = tmp_path / "train_log.csv"
    append_log(log, [{"update": 1, "loss": 0.5, "lr": 1e-3, "grad_norm": 1.0, "audio_hours": 0.1,
                      "skipped_files": 0, "seconds": 1.0}])
    plot_log(log, tmp_path / "loss.png")
    for path in (log, tmp_path / "loss.png"):
        assert mode(path) == expected, f"{path.name}: {oct(mode(path))}"


def test_the_exported_model_gets_the_umask_mode(umask, tmp_path):
    pytest.importorskip("transformers")
    from score_s3prl.export import export_model

    ckpt = tmp_path / "export.pt"
    write_converted(ckpt, **tiny_hubert_state(seed=0),
                    score={"method": "SCORE", "config": {"init": str(tmp_path / "base.pt")}, "updates": 1})
    out = export_model(ckpt, tmp_path / "hf")
    expected = 0o666 & ~umask
    files = sorted(out.iterdir())
    assert {"model.safetensors", "README.md", "score_s3prl.json", "config.json"} <= {p.name for p in files}
    for path in files:
        assert mode(path) == expected, f"{path.name}: {oct(mode(path))}, expected {oct(expected)}"
