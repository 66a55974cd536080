"""Named bases: every HuBERT and WavLM checkpoint s3prl's hub serves, by its entry name, through
the checked downloader into s3prl's cache; ``score-s3prl fetch`` fills that cache ahead."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import pytest
import torch

from score_s3prl.checkpoints import bases, load_base_state
from score_s3prl.checkpoints.download import cache_path
from score_s3prl.cli import main as cli
from score_s3prl.errors import ScoreError


def hub_urls(tiny_file: Path) -> dict[str, str]:
    """Entry name -> the checkpoint URL it loads, for every entry of s3prl's HuBERT and WavLM
    hubconfs, found by calling each one with the download and the model build intercepted."""
    from s3prl.upstream.hubert import hubconf as hubert_hubconf
    from s3prl.upstream.wavlm import hubconf as wavlm_hubconf

    urls = {}
    for hubconf in (hubert_hubconf, wavlm_hubconf):
        asked = []

        def download(url, refresh=False, **_):
            asked.append(url)
            return str(tiny_file)  # an existing file, so the entry goes on to build its model

        entries = [(name, fn) for name, fn in inspect.getmembers(hubconf, inspect.isfunction)
                   if fn.__module__ == hubconf.__name__ and not name.startswith("_")
                   and not name.endswith(("_custom", "_local", "_url"))]  # these take a user's ckpt
        saved = hubconf._urls_to_filepaths, hubconf._UpstreamExpert
        hubconf._urls_to_filepaths, hubconf._UpstreamExpert = download, lambda ckpt, *a, **k: ckpt
        try:
            for name, entry in entries:
                asked.clear()
                assert entry() == str(tiny_file), name  # the file it downloaded is the one it loads
                assert len(asked) == 1, (name, asked)
                urls[name] = asked[0]
        finally:
            hubconf._urls_to_filepaths, hubconf._UpstreamExpert = saved
    return urls


def test_base_urls_are_exactly_what_s3prls_hub_entries_load(tiny_ckpt):
    served = hub_urls(tiny_ckpt)
    assert {"hubert_base", "hubert_large_ll60k", "wavlm_base", "wavlm_base_plus", "wavlm_large"} <= served.keys()
    assert served == bases.BASE_URLS
    assert bases.HUBERT_BASE_URL == served["hubert_base"] and bases.WAVLM_BASE_URL == served["wavlm_base"]


@pytest.fixture
def served_locally(monkeypatch, tmp_path, tiny_ckpt, tiny_wavlm_ckpt):
    """s3prl's cache in a temporary folder; hubert_large_ll60k and wavlm_large served from
    file:// copies of the tiny checkpoints (the downloader's own code path, no network)."""
    from s3prl.util import download

    monkeypatch.setattr(download, "_download_dir", tmp_path / "cache")
    sources = {}
    for name, tiny in (("hubert_large_ll60k", tiny_ckpt), ("wavlm_large", tiny_wavlm_ckpt)):
        source = tmp_path / "server" / f"{name}.pt"
        source.parent.mkdir(exist_ok=True)
        source.write_bytes(Path(tiny).read_bytes())
        monkeypatch.setitem(bases.BASE_URLS, name, source.as_uri())
        sources[name] = source
    return sources


def test_init_by_name_downloads_into_s3prls_cache(served_locally):
    for name, source in served_locally.items():
        state, identity = load_base_state(name)
        assert identity == f"{name} sha256:{hashlib.sha256(source.read_bytes()).hexdigest()}"
        cached = cache_path(bases.BASE_URLS[name])
        assert cached.is_file() and cached.read_bytes() == source.read_bytes()
        reference = torch.load(source, weights_only=True)
        weights, expected = (s["model"] if name == "wavlm_large" else s["model_weight"] for s in (state, reference))
        assert all(torch.equal(weights[k], v) for k, v in expected.items())


def test_fetch_fills_the_cache_that_init_and_stock_s3prl_read_offline(served_locally, capsys):
    from s3prl.util.download import _urls_to_filepaths

    assert cli(["fetch", "hubert_large_ll60k", "wavlm_large", "hubert_large_ll60k"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = [f"{name}\t{cache_path(bases.BASE_URLS[name])}" for name in ("hubert_large_ll60k", "wavlm_large")]
    assert lines == expected  # each name once, in the order given
    for source in served_locally.values():
        source.unlink()  # offline from here on
    for name in served_locally:
        load_base_state(name)  # --init NAME
        # stock s3prl's -u NAME: its downloader uses the cached file (it cannot open file:// URLs,
        # so a download attempt would fail)
        assert _urls_to_filepaths(bases.BASE_URLS[name]) == str(cache_path(bases.BASE_URLS[name]))
    assert cli(["fetch", "wavlm_large"]) == 0  # a cached file is checked and reused


def test_fetch_checks_every_name_before_downloading(served_locally, capsys):
    code = cli(["fetch", "hubert_large_ll60k", "wavlm_larg"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: wavlm_larg: not a named base (did you mean wavlm_large")
    assert "hubert_base_robust_mgr" in err  # the known names are listed
    assert not cache_path(bases.BASE_URLS["hubert_large_ll60k"]).exists()  # nothing was fetched


def test_fetch_keeps_nothing_that_is_not_a_checkpoint(served_locally, capsys):
    served_locally["wavlm_large"].write_text("<html>not found</html>")
    code = cli(["fetch", "wavlm_large"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "wavlm_large: " in err and "cannot download checkpoint" in err and "nothing was cached" in err
    assert not cache_path(bases.BASE_URLS["wavlm_large"]).exists()


def test_unknown_name_for_init_lists_the_named_bases():
    with pytest.raises(ScoreError, match=r"hubert_large: base model not found \(expected a named base"):
        load_base_state("hubert_large")
    with pytest.raises(ScoreError, match=r"hubert_large: not a named base \(did you mean hubert_large_ll60k"):
        bases.fetch_base("hubert_large")
