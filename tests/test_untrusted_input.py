"""Untrusted files run no code, and every bad setting or fault is one clear error (issue 11).

One section per item of the issue: (1) crafted checkpoints at every entry point that reads
one, (2) config values, (3) resume against other base weights, (4) downloads, (7) qbe-score,
(8) the small ones; then a bounded, seeded fuzz of the CLIs and hub entries.
"""

from __future__ import annotations

import http.server
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from score_s3prl import cli, hub
from score_s3prl.checkpoints import load_base_state
from score_s3prl.checkpoints.hubert import tiny_hubert_state, write_converted
from score_s3prl.config import load_config
from score_s3prl.errors import ScoreError
from score_s3prl.train import EXPORT_FILE, STATE_FILE, train

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "upstream_configs" / "score_tiny.yaml"


def tiny_config(init, data, out, **values):
    return load_config(TINY_CONFIG, values_set={"init": str(init), "data.root": str(data), "out": str(out), **values})


def one_error_line(text: str) -> str:
    """The single ``error: ...`` line of a CLI's stderr; fails on a traceback or several errors."""
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    return errors[0]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    """``score-s3prl ARGV`` in process: (exit code, the one error line)."""
    capsys.readouterr()
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, (one_error_line(err) if code else "")


# ============================================================== 1. checkpoints run no code


class _System:
    """Unpickles as os.system("touch MARKER")."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {marker}"

    def __reduce__(self):
        return (os.system, (self.command,))


class _Dotted:
    """Unpickles as torch._utils._import_dotted_name(NAME): the name's object, e.g. os.system."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args):  # pickle checks that a reduce function is callable
        raise AssertionError("never called when pickling")

    def __reduce__(self):
        return (torch._utils._import_dotted_name, (self.name,))


class _DottedSystem:
    """Unpickles as _import_dotted_name("os.system")("touch MARKER"): the issue's exploit."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {marker}"

    def __reduce__(self):
        return (_Dotted("os.system"), (self.command,))


def _valid_with(payload) -> dict:
    """A valid converted checkpoint that also carries ``payload``."""
    return {**tiny_hubert_state(seed=0), "notes": payload}


def _write_zip(path: Path, marker: Path, kind: type) -> None:
    torch.save(_valid_with(kind(marker)), path)


def _write_legacy_magic(path: Path, marker: Path, kind: type) -> None:
    # torch's legacy format starts with a pickled magic number: here it is the payload
    path.write_bytes(pickle.dumps(kind(marker), protocol=2))


def _write_fairseq_layout(path: Path, marker: Path, kind: type) -> None:
    # a fairseq-style checkpoint makes the loader fall back to its fairseq unpickler
    state = tiny_hubert_state(seed=0)
    torch.save({"cfg": {"model": {**state["model_cfg"], "_name": "hubert"}, "task": state["task_cfg"]},
                "model": state["model_weight"], "task_state": {"dictionaries": []}, "x": kind(marker)}, path)


WRITERS = {"zip": _write_zip, "legacy-magic": _write_legacy_magic, "fairseq-layout": _write_fairseq_layout}
PAYLOADS = {"os.system": _System, "_import_dotted_name": _DottedSystem}
CRAFTED = [(w, p) for w in WRITERS for p in PAYLOADS]


@pytest.fixture(params=CRAFTED, ids=[f"{w}-{p}" for w, p in CRAFTED])
def crafted(request, tmp_path) -> tuple[Path, Path]:
    """(a crafted checkpoint, the marker file its payload would create)."""
    writer, payload = request.param
    marker, path = tmp_path / "marker", tmp_path / "evil.pt"
    WRITERS[writer](path, marker, PAYLOADS[payload])
    return path, marker


def _refused(message: str, path: Path) -> None:
    assert "\n" not in message, message
    assert message.startswith(str(path)) or str(path) in message, message
    assert re.search(r"refused, nothing was run|not a PyTorch checkpoint|not a loadable", message), message


def test_init_runs_no_code(crafted):
    path, marker = crafted
    with pytest.raises(ScoreError) as error:
        load_base_state(str(path))
    assert not marker.exists(), "the checkpoint ran code"
    _refused(str(error.value), path)


@pytest.mark.slow  # a subprocess per crafted file
def test_finetune_init_cli_runs_no_code(tmp_path, assets_dir):
    marker, path = tmp_path / "marker", tmp_path / "evil.pt"
    _write_fairseq_layout(path, marker, _DottedSystem)
    proc = subprocess.run([sys.executable, "-m", "score_s3prl.cli", "finetune", "--config", str(TINY_CONFIG),
                           "--init", str(path), "--data", str(assets_dir), "--out", str(tmp_path / "run"),
                           "--steps", "1"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and not marker.exists(), proc.stderr
    assert proc.stderr.count("\n") == 1 and "nothing was run" in one_error_line(proc.stderr)
    assert not (tmp_path / "run" / EXPORT_FILE).exists()


@pytest.mark.parametrize("entry", ["score_hubert_local", "score_hubert", "score_hubert_url"])
def test_hub_entries_run_no_code(crafted, entry, monkeypatch, tmp_path):
    from s3prl.util import download

    path, marker = crafted
    monkeypatch.setattr(download, "_download_dir", tmp_path / "cache")
    monkeypatch.setenv(hub.CKPT_ENV, str(path))
    call = {
        "score_hubert_local": lambda: hub.score_hubert_local(ckpt=str(path)),
        "score_hubert": lambda: hub.score_hubert(),  # from $SCORE_HUBERT_CKPT
        "score_hubert_url": lambda: hub.score_hubert_url(ckpt=path.as_uri()),
    }[entry]
    with pytest.raises(ScoreError) as error:
        call()
    assert not marker.exists(), "the checkpoint ran code"
    assert "\n" not in str(error.value) and "evil.pt" in str(error.value)
    assert not list((tmp_path / "cache").glob("*evil.pt")), "a refused download was cached"


def test_resume_state_runs_no_code(tiny_ckpt, assets_dir, tmp_path):
    marker, run = tmp_path / "marker", tmp_path / "run"
    run.mkdir()
    torch.save({"trainable": {}, "position": {"update": 1}, "config_hash": _DottedSystem(marker)}, run / STATE_FILE)
    with pytest.raises(ScoreError, match=r"train_state.pt: not a loadable training state: it names "
                                         r"torch._utils._import_dotted_name.*nothing was run"):
        train(tiny_config(tiny_ckpt, assets_dir, run, **{"optim.total_updates": 1}))
    assert not marker.exists()


def test_downstream_past_exp_runs_no_code(crafted, capsys, tmp_path, monkeypatch):
    path, marker = crafted
    monkeypatch.chdir(tmp_path)
    code, line = run_cli(capsys, "downstream", "-m", "evaluate", "-e", str(path))
    assert code == 2 and not marker.exists()
    _refused(line, path)


# ============================================================== 2. config values


def test_readme_override_is_a_float():
    assert load_config(None, ["optim.lr=1e-5"]).optim.lr == 1e-5
    assert load_config(None, ["optim.lr=3E-4"]).optim.lr == 3e-4


def test_a_single_subset_string_is_a_one_element_list():
    assert load_config(None, ["data.subsets=train-clean-100"]).data.subsets == ["train-clean-100"]
    assert load_config(None, values_set={"data.subsets": "train-clean-360"}).data.subsets == ["train-clean-360"]


@pytest.mark.parametrize("override, message", [
    ("save_every=0", "save_every = 0: expected greater than or equal to 1"),
    ("seed=-1", "seed = -1: expected greater than or equal to 0"),
    ("optim=3", "optim = 3: expected a mapping of keys"),
    ("optim.lr=fast", "optim.lr = 'fast': expected a valid number"),
    ("optim.total_updates=2.5", "optim.total_updates = 2.5: expected a valid integer"),
    ("precision=1", "precision = 1: expected 'fp32' or 'bf16'"),
    ("model.dropout=eval", "model.dropout = 'eval': expected 'official' or 'frozen-eval'"),
    ("views.swap_prob=1.5", "views.swap_prob = 1.5: expected less than or equal to 1"),
    ("views.speed_factors=[0.9, .nan]", r"views.speed_factors\[1\] = .*expected a finite number"),
    ("device=gpu", "device = 'gpu': expected a string matching"),
    ("data.subsets=[]", r"data.subsets = \[\]: expected at least 1 item"),
    ("optim.nope=1", "unknown config key optim.nope"),
])
def test_bad_values_name_key_value_and_expectation(override, message):
    with pytest.raises(ScoreError, match=message) as error:
        load_config(None, [override])
    assert "\n" not in str(error.value)


def test_negative_steps_is_an_error_before_any_work(capsys, tmp_path):
    code, line = run_cli(capsys, "finetune", "--steps", "-5", "--out", str(tmp_path / "run"))
    assert code == 2 and "optim.total_updates = -5: expected greater than or equal to 1" in line
    assert not (tmp_path / "run").exists()


# ============================================================== 3. resume checks the base's content


@pytest.mark.parametrize("other", [dict(seed=1), dict(seed=0, layers=2)], ids=["other-weights", "other-shape"])
def test_resume_refuses_other_base_weights_at_the_same_path(assets_dir, tmp_path, other):
    base, run = tmp_path / "base.pt", tmp_path / "run"
    write_converted(base, **tiny_hubert_state(seed=0))
    train(tiny_config(base, assets_dir, run, **{"optim.total_updates": 2, "save_every": 1}))
    (run / EXPORT_FILE).unlink()
    write_converted(base, **tiny_hubert_state(**other))
    with pytest.raises(ScoreError, match=r"trained from a base checkpoint with sha256 [0-9a-f]{64}, but init .* "
                                         r"now has sha256 [0-9a-f]{64}.*delete .*run or use a new --out"):
        train(tiny_config(base, assets_dir, run, **{"optim.total_updates": 4, "save_every": 1}))
    assert not (run / EXPORT_FILE).exists()


# ============================================================== 4. downloads


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path.startswith("/hang"):
            time.sleep(3)  # accepts the connection, never answers within the client's timeout
            return
        if self.path.startswith("/missing"):
            self.send_error(404, "Not Found")
            return
        body = b"<html>Rate limited, try later</html>" if self.path.startswith("/garbage") else self.body
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tiny_ckpt, tmp_path, monkeypatch):
    """A local HTTP server on 127.0.0.1: /hang, /missing (404), /garbage, /good/tiny.pt."""
    from s3prl.util import download

    monkeypatch.setattr(download, "_download_dir", tmp_path / "cache")
    handler = type("Handler", (_Handler,), {"body": Path(tiny_ckpt).read_bytes()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_that_never_answers_times_out(server):
    from score_s3prl.checkpoints.download import fetch

    started = time.time()
    with pytest.raises(ScoreError, match=r"/hang/x.pt: cannot download checkpoint \(no answer within 0.5 s\)"):
        fetch(f"{server}/hang/x.pt", timeout=0.5)
    assert time.time() - started < 2.5


def test_http_error_and_garbage_are_refused_and_not_cached(server):
    from score_s3prl.checkpoints.hubert import read_converted
    from score_s3prl.checkpoints.download import cache_path, fetch

    with pytest.raises(ScoreError, match=r"cannot download checkpoint \(HTTP 404 Not Found\)"):
        hub.score_hubert_url(ckpt=f"{server}/missing/x.pt")
    url = f"{server}/garbage/x.pt"
    with pytest.raises(ScoreError, match=r"the downloaded file: not a PyTorch checkpoint.*nothing was cached"):
        fetch(url, validate=read_converted)
    assert not cache_path(url).exists()
    assert not [p for p in cache_path(url).parent.iterdir() if p.suffix == ".tmp"]


def test_good_download_is_cached_and_a_bad_cached_file_replaced(server, speech):
    from score_s3prl.checkpoints.download import cache_path

    url = f"{server}/good/tiny.pt"
    cache_path(url).parent.mkdir(parents=True, exist_ok=True)
    cache_path(url).write_text("<html>an error page an older downloader cached</html>")
    expert = hub.score_hubert_url(ckpt=url)
    assert torch.load(cache_path(url), weights_only=True)["model_cfg"]
    assert expert([speech])["hidden_states"]


@pytest.mark.parametrize("url, problem", [
    ("ftp://example.org/x.pt", "URL scheme 'ftp'"),
    ("x.pt", "URL scheme 'missing'"),
    ("file:///nonexistent/dir/x.pt", "No such file or directory"),
])
def test_other_urls_are_refused_by_name(url, problem, tmp_path, monkeypatch):
    from s3prl.util import download

    monkeypatch.setattr(download, "_download_dir", tmp_path / "cache")
    with pytest.raises(ScoreError, match=re.escape(problem)):
        hub.score_hubert_url(ckpt=url)


# ============================================================== 7. qbe-score


def _groundtruth(tmp_path: Path) -> Path:
    from test_mtwv import write_groundtruth

    return write_groundtruth(tmp_path / "gt")


def test_qbe_stdlist_of_another_set_is_an_error(tmp_path, capsys):
    from test_mtwv import stdlist_xml

    stdlist = tmp_path / "other.stdlist.xml"
    stdlist.write_text(stdlist_xml({"other_q": [("other_f", 1.0, "YES")]}))
    code, line = run_cli(capsys, "qbe-score", str(stdlist), str(_groundtruth(tmp_path)))
    assert code == 2 and "matches no trial of the ground truth" in line and "other_q/other_f" in line


def test_qbe_root_element_and_default_score_are_checked(tmp_path, capsys):
    from test_mtwv import TERMS, stdlist_xml

    gt = _groundtruth(tmp_path)
    wrong = tmp_path / "wrong.xml"
    wrong.write_text(stdlist_xml(TERMS).replace("<stdlist ", "<rss ").replace("</stdlist>", "</rss>"))
    code, line = run_cli(capsys, "qbe-score", str(wrong), str(gt))
    assert code == 2 and "root element is <rss>, expected <stdlist>" in line
    good = tmp_path / "good.xml"
    good.write_text(stdlist_xml(TERMS))
    for value in ("nan", "inf", "-inf"):
        code, line = run_cli(capsys, "qbe-score", str(good), str(gt), f"--default-score={value}")
        assert code == 2 and "is not a finite number" in line


# ============================================================== 8. the small ones


def test_min_seconds_too_short_for_the_cnn_is_refused_before_work(tiny_ckpt, assets_dir, tmp_path):
    # 0.02 s = 320 samples, x1.1 faster = 291 samples; the CNN needs 400 for one frame
    cfg = tiny_config(tiny_ckpt, assets_dir, tmp_path / "run", **{"data.min_seconds": 0.02})
    with pytest.raises(ScoreError, match=r"data.min_seconds = 0.02 is too short for this model: .*"
                                         r"the CNN needs 400; set data.min_seconds >= 0.028"):
        train(cfg)
    assert not (tmp_path / "run" / STATE_FILE).exists()


def test_unreadable_files_are_counted_once(tiny_ckpt, assets_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus" / "train-clean-100" / "1" / "2"
    corpus.mkdir(parents=True)
    for i, source in enumerate(sorted((assets_dir / "train-clean-100").rglob("*.flac"))[:2]):
        shutil.copy(source, corpus / f"1-2-{i:04d}.flac")
    for i in (2, 3):  # headers that scan fine, frames that do not decode
        path = corpus / f"1-2-{i:04d}.flac"
        soundfile.write(path, np.random.default_rng(i).uniform(-0.1, 0.1, 32000), 16000)
        path.write_bytes(path.read_bytes()[:200])
    cfg = tiny_config(tiny_ckpt, tmp_path / "corpus", tmp_path / "run",
                      **{"data.subsets": ["train-clean-100"], "optim.total_updates": 6,
                         "optim.utterances_per_update": 2, "data.batch_size": 1})
    with pytest.warns(UserWarning):
        train(cfg)
    state = torch.load(tmp_path / "run" / STATE_FILE, weights_only=True)
    assert state["position"]["skipped_files"] == 2
    assert "0 too-short and 2 unreadable files" in capsys.readouterr().err


def test_stale_temp_files_of_dead_writers_are_removed_at_start(tiny_ckpt, assets_dir, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = run / f".{STATE_FILE}.999999999.ab12cd34.tmp"  # above any pid_max: a dead writer
    live = run / f".{STATE_FILE}.{os.getppid()}.ab12cd34.tmp"  # a running process's
    other = run / "notes.tmp"
    for path in (dead, live, other):
        path.write_bytes(b"partial")
    train(tiny_config(tiny_ckpt, assets_dir, run, **{"optim.total_updates": 1}))
    assert not dead.exists() and live.exists() and other.exists()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp") and p not in (live, other)]


def test_a_text_file_as_checkpoint_says_what_it_is(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello, not weights")
    with pytest.raises(ScoreError, match=r"notes.pt: not a PyTorch checkpoint \(it starts with b'hell', "
                                         r"neither a zip archive nor a pickle\)"):
        load_base_state(str(path))


# ============================================================== fuzz: exit 2 and one line


FUZZ_KEYS = ["seed", "save_every", "log_every", "max_bad_losses", "optim.lr", "optim.total_updates",
             "optim.grad_clip", "data.batch_size", "data.batch_seconds", "views.swap_prob",
             "model.head_dim", "views.speed_factors"]
# each invalid for every key above (numbers out of range, wrong types, non-finite, null)
FUZZ_VALUES = ["abc", "-7", ".nan", ".inf", "{a: 1}", "[[1]]", "''", "~", "1e400", "true", "-0.5"]


def _garbage_file(rng: random.Random, path: Path, tiny_ckpt: Path) -> Path:
    kind = rng.choice(["bytes", "empty", "yaml-list", "bad-yaml", "truncated", "zip", "utf16", "dir"])
    if kind == "bytes":
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "yaml-list":
        path.write_text("- 1\n- 2\n")
    elif kind == "bad-yaml":
        path.write_text("optim: [1, {\n")
    elif kind == "truncated":
        data = Path(tiny_ckpt).read_bytes()
        path.write_bytes(data[: rng.randrange(1, len(data) // 2)])
    elif kind == "zip":
        import zipfile

        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", bytes(rng.randrange(256) for _ in range(64)))
    elif kind == "utf16":
        path.write_bytes("seed: 1\n".encode("utf-16"))
    else:
        path.mkdir()
    return path


@pytest.mark.parametrize("seed", range(6))
def test_fuzz_finetune(seed, capsys, tmp_path, tiny_ckpt):
    rng = random.Random(seed)
    cases = [[f"{rng.choice(FUZZ_KEYS)}={rng.choice(FUZZ_VALUES)}"] for _ in range(4)]
    cases += [["--steps", rng.choice(["0", "-1", "x", "1.5"])],
              ["--config", str(_garbage_file(rng, tmp_path / f"cfg{seed}.yaml", tiny_ckpt))],
              ["--init", str(_garbage_file(rng, tmp_path / f"init{seed}.pt", tiny_ckpt)), "--device", "cpu",
               "--data", str(tmp_path), "--steps", "1", "--out", str(tmp_path / "run")],
              [rng.choice(["noequals", "=1", "a..b=1", "seed.x=1", "optim.lr=[", "--bogus"])]]
    for argv in cases:
        code, line = run_cli(capsys, "finetune", *argv)
        assert code == 2, argv
        assert line, argv
    assert not (tmp_path / "run" / EXPORT_FILE).exists()


@pytest.mark.parametrize("seed", range(4))
def test_fuzz_qbe_score(seed, capsys, tmp_path, tiny_ckpt):
    from test_mtwv import TERMS, stdlist_xml

    rng = random.Random(seed)
    gt = _groundtruth(tmp_path)
    good = tmp_path / "good.xml"
    good.write_text(stdlist_xml(TERMS))
    bad_terms = {"q1": [("f1", rng.choice([float("nan"), float("inf")]), "YES")]}
    cases = [
        [str(_garbage_file(rng, tmp_path / "s.xml", tiny_ckpt)), str(gt)],
        [str(good), str(_garbage_file(rng, tmp_path / "gtfile", tiny_ckpt))],
        [str(good), str(gt), "--default-score", rng.choice(["nan", "x", "1e999", ""])],
        [str(_write(tmp_path / "nan.xml", stdlist_xml(bad_terms))), str(gt)],
        [str(_write(tmp_path / "cut.xml", stdlist_xml(TERMS)[: rng.randrange(10, 200)])), str(gt)],
        [str(good)],
    ]
    for argv in cases:
        code, _ = run_cli(capsys, "qbe-score", *argv)
        assert code == 2, argv


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("seed", range(3))
def test_fuzz_make_tiny(seed, capsys, tmp_path):
    rng = random.Random(seed)
    cases = [[str(tmp_path / "x.pt"), rng.choice(["--dim", "--layers", "--seed"]), rng.choice(["-1", "0", "x", "3.5"])],
             [str(tmp_path / "x.pt"), "--dim", rng.choice(["3", "7", "-2"])],
             [str(tmp_path)],  # a directory
             [str(tmp_path / "x.pt"), "--unknown"], []]
    for argv in cases:
        code, _ = run_cli(capsys, "make-tiny", *argv)
        assert code == 2, argv
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("seed", range(4))
def test_fuzz_hub_entries(seed, tmp_path, tiny_ckpt, monkeypatch):
    from s3prl.util import download

    monkeypatch.setattr(download, "_download_dir", tmp_path / "cache")
    rng = random.Random(seed)
    path = _garbage_file(rng, tmp_path / "k.pt", tiny_ckpt)
    calls = [lambda: hub.score_hubert_local(ckpt=str(path)),
             lambda: hub.score_hubert_url(ckpt=path.as_uri()),
             lambda: hub.score_hubert_url(ckpt=rng.choice(["::::", "http://127.0.0.1:9/x.pt", "gopher://x/y"])),
             lambda: hub.score_hubert(ckpt=str(tmp_path / "absent.pt"))]
    for call in calls:
        with pytest.raises(ScoreError) as error:
            call()
        assert "\n" not in str(error.value), str(error.value)



def test_wavlm_url_entry_downloads_like_the_hubert_one(server, tmp_path, speech):
    from score_s3prl.checkpoints.wavlm import tiny_wavlm_state, write_wavlm
    from score_s3prl.checkpoints.download import cache_path

    with pytest.raises(ScoreError, match=r"cannot download checkpoint \(HTTP 404 Not Found\)"):
        hub.score_wavlm_url(ckpt=f"{server}/missing/w.pt")
    hubert_url = f"{server}/good/tiny.pt"  # a good checkpoint of the other architecture: not cached
    with pytest.raises(ScoreError, match="not an s3prl WavLM checkpoint.*nothing was cached"):
        hub.score_wavlm_url(ckpt=hubert_url)
    assert not cache_path(hubert_url).exists()
    write_wavlm(tmp_path / "w.pt", **tiny_wavlm_state())
    url = (tmp_path / "w.pt").as_uri()
    assert hub.score_wavlm_url(ckpt=url)([speech])["hidden_states"]
    assert cache_path(url).exists()
