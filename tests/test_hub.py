"""score_s3prl.hub: the score_hubert entries keep s3prl's HuBERT upstream contract and explain bad input."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from score_s3prl import hub
from score_s3prl.checkpoints.hubert import tiny_hubert_state, write_converted
from score_s3prl.errors import ScoreError

LAYERS = 4  # tiny_hubert_state's default


@pytest.fixture(scope="module", autouse=True)
def registered():
    hub.register()


def frames(samples: int) -> int:
    """HuBERT's conv stack: receptive field 400 samples, hop 320."""
    return (samples - 400) // 320 + 1


def hidden_states(upstream, wavs):
    with torch.no_grad():
        return upstream.eval()(wavs)["hidden_states"]


def test_register_attaches_entries():
    import s3prl.hub

    for name, entry in hub.ENTRIES.items():
        assert getattr(s3prl.hub, name) is entry
        assert name in s3prl.hub.options()


def test_local_entry_matches_stock_hubert_local(tiny_ckpt, speech):
    import s3prl.hub

    ours = s3prl.hub.score_hubert_local(ckpt=str(tiny_ckpt), model_config=None, refresh=False)
    stock = s3prl.hub.hubert_local(ckpt=str(tiny_ckpt))
    mine, theirs = hidden_states(ours, [speech]), hidden_states(stock, [speech])
    assert len(mine) == len(theirs) == LAYERS + 1
    for a, b in zip(mine, theirs):
        assert a.shape == (1, frames(len(speech)), 32)
        assert torch.equal(a, b)
    assert ours.get_downsample_rates("hidden_states") == 320
    assert ours.score_metadata is None


def test_frames_follow_320_samples_in_a_padded_batch(tiny_ckpt, speech):
    upstream = hub.score_hubert_local(ckpt=tiny_ckpt)
    lengths = [16000, 32000, len(speech)]
    states = hidden_states(upstream, [speech[:n] for n in lengths])
    assert [h.shape for h in states] == [(3, frames(max(lengths)), 32)] * (LAYERS + 1)
    assert [frames(n) for n in lengths] == [49, 99, len(speech) // 320]


def test_featurizer_weighted_sum(tiny_ckpt, speech):
    from s3prl.upstream.interfaces import Featurizer

    upstream = hub.score_hubert_local(ckpt=tiny_ckpt).eval()
    featurizer = Featurizer(upstream, upstream_device="cpu")
    assert (featurizer.output_dim, featurizer.downsample_rate, featurizer.layer_num) == (32, 320, LAYERS + 1)
    wav = speech[:32000]
    with torch.no_grad():
        outputs = upstream([wav])
    features = featurizer([wav], outputs)
    # zero-initialised layer weights: the softmax is uniform, the sum is the mean over layers
    expected = torch.stack(outputs["hidden_states"]).mean(0)[0]
    assert len(features) == 1 and features[0].shape == (frames(len(wav)), 32)
    assert torch.allclose(features[0], expected, atol=1e-5)
    features[0].sum().backward()
    assert featurizer.weights.grad is not None and featurizer.weights.grad.abs().sum() > 0


def test_score_metadata_and_stock_compatibility(tmp_path, speech):
    path = tmp_path / "score.pt"
    write_converted(path, **tiny_hubert_state(seed=1), score={"method": "score", "updates": 3600})
    import s3prl.hub

    ours = hub.score_hubert_local(ckpt=path)
    assert ours.score_metadata == {"method": "score", "updates": 3600}
    stock = s3prl.hub.hubert_local(ckpt=str(path))  # the extra block does not bother s3prl
    assert torch.equal(hidden_states(ours, [speech])[-1], hidden_states(stock, [speech])[-1])


def test_default_entry_uses_env_then_default_path(tiny_ckpt, tmp_path, monkeypatch, speech):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(hub.CKPT_ENV, raising=False)
    with pytest.raises(ScoreError) as error:
        hub.score_hubert()
    message = str(error.value)
    assert message.startswith(f"{hub.DEFAULT_CKPT}: score_hubert checkpoint not found")
    assert "score-s3prl finetune --config upstream_configs/score_hubert_base.yaml" in message
    assert hub.CKPT_ENV in message

    monkeypatch.setenv(hub.CKPT_ENV, str(tiny_ckpt))
    reference = hidden_states(hub.score_hubert_local(ckpt=tiny_ckpt), [speech])[-1]
    assert torch.equal(hidden_states(hub.score_hubert(), [speech])[-1], reference)

    monkeypatch.setenv(hub.CKPT_ENV, str(tmp_path / "nope.pt"))
    with pytest.raises(ScoreError, match=r"nope.pt: score_hubert checkpoint not found \(named by"):
        hub.score_hubert()

    monkeypatch.delenv(hub.CKPT_ENV)
    default = Path(hub.DEFAULT_CKPT)
    default.parent.mkdir(parents=True)
    default.write_bytes(Path(tiny_ckpt).read_bytes())
    assert torch.equal(hidden_states(hub.score_hubert(), [speech])[-1], reference)


def test_url_entry_downloads_once_and_caches(tiny_ckpt, tmp_path, monkeypatch, speech):
    from s3prl.util import download

    monkeypatch.setattr(download, "_download_dir", tmp_path / "cache")
    source = tmp_path / "served.pt"
    source.write_bytes(Path(tiny_ckpt).read_bytes())
    url = source.as_uri()  # file:// needs no network and goes through the same download code
    first = hidden_states(hub.score_hubert_url(ckpt=url), [speech])[-1]
    assert len(list((tmp_path / "cache").glob("*.served.pt"))) == 1
    source.unlink()
    cached = hidden_states(hub.score_hubert_url(ckpt=url), [speech])[-1]  # from the cache
    assert torch.equal(first, cached)
    (cached_file,) = (tmp_path / "cache").glob("*.served.pt")
    os.utime(cached_file, (0, 0))  # s3prl re-downloads on refresh only when the copy is not brand new
    with pytest.raises(ScoreError, match="served.pt: cannot download checkpoint"):
        hub.score_hubert_url(ckpt=url, refresh=True)


def bad_checkpoint(tmp_path: Path, edit) -> Path:
    state = tiny_hubert_state(seed=0)
    edit(state)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("edit, problem", [
    (lambda s: s.pop("model_cfg"), "missing model_cfg"),
    (lambda s: s["model_weight"].pop("encoder.layer_norm.weight"), "missing weights encoder.layer_norm.weight"),
    (lambda s: s["model_weight"].update({"encoder.layer_norm.bias": torch.zeros(7)}), "wrong shapes"),
    (lambda s: s["model_cfg"].update({"encoder_layers": 5}), "missing weights encoder.layers.4"),
])
def test_bad_checkpoints_name_file_and_problem(tmp_path, edit, problem):
    path = bad_checkpoint(tmp_path, edit)
    with pytest.raises(ScoreError) as error:
        hub.score_hubert_local(ckpt=str(path))
    assert str(error.value).startswith(str(path)) and problem in str(error.value)


def test_missing_or_unreadable_checkpoint(tmp_path):
    with pytest.raises(ScoreError, match="nope.pt: checkpoint not found"):
        hub.score_hubert_local(ckpt=str(tmp_path / "nope.pt"))
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(ScoreError, match=r"text.pt: not a PyTorch checkpoint \(it starts with b.hell., neither a zip archive nor a pickle\)"):
        hub.score_hubert_local(ckpt=str(text))
    with pytest.raises(ScoreError, match="needs a checkpoint file: -k PATH"):
        hub.score_hubert_local()


def test_stock_loader_restored_after_failure(tiny_ckpt):
    from s3prl.upstream.hubert import expert

    original = expert.load_converted_model
    hub.score_hubert_local(ckpt=tiny_ckpt)
    assert expert.load_converted_model is original
    with pytest.raises(AssertionError):  # s3prl's Hook refuses a non-string module path mid-constructor
        hub.score_hubert_local(ckpt=tiny_ckpt, hooks=[(123, lambda inputs, output: output)])
    assert expert.load_converted_model is original
