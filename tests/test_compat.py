"""score_s3prl.compat: each shim is missing on this stack, apply() installs it, and it behaves like the original."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch

from score_s3prl import compat
from score_s3prl.audio import AudioError
from score_s3prl.errors import ScoreError


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
def test_stock_s3prl_needs_apply():
    bare = run_python("import s3prl.hub")
    assert bare.returncode != 0
    assert "set_audio_backend" in bare.stderr
    shimmed = run_python("""
        from score_s3prl import compat
        compat.apply()
        import s3prl.hub, s3prl.run_downstream, s3prl.downstream.runner
        import s3prl.downstream.quesst14_dtw.dataset
        print("ok")
    """)
    assert shimmed.returncode == 0, shimmed.stderr
    assert shimmed.stdout.strip().endswith("ok")


@pytest.mark.slow
def test_each_shim_is_missing_on_this_stack_and_works_after_apply(speech_path):
    # One fresh interpreter: try what s3prl uses before and after apply().
    result = run_python(f"""
        import argparse, io, json, torch
        probes = {{
            "torchaudio.set_audio_backend": "import torchaudio; torchaudio.set_audio_backend('sox_io')",
            "torchaudio.info": "import torchaudio; assert torchaudio.info({str(speech_path)!r}).sample_rate == 16000",
            "torchaudio.load": "import torchaudio; assert torchaudio.load({str(speech_path)!r})[1] == 16000",
            "torchaudio.save": "import torchaudio, tempfile; torchaudio.save(tempfile.mktemp(suffix='.wav'), torch.zeros(1, 80), 16000)",
            "torchaudio.sox_effects": "from torchaudio.sox_effects import apply_effects_file",
            "s3prl.util.audio_info workers": (
                "from s3prl.util.audio_info import get_audio_info; import tempfile;"
                "assert get_audio_info([{str(speech_path)!r}], ['u'], cache_dir=tempfile.mkdtemp(),"
                " num_workers=2)[0]['sample_rate'] == 16000"),
            "huggingface_hub.HfFolder": "from huggingface_hub import HfFolder",
            "huggingface_hub.Repository": "from huggingface_hub import Repository",
            "torch.load(argparse.Namespace)": (
                "b = io.BytesIO(); torch.save({{'Args': argparse.Namespace(x=1)}}, b); b.seek(0);"
                "assert torch.load(b)['Args'].x == 1"),
        }}
        def works(code):
            try:
                exec(code, {{"io": io, "argparse": argparse, "torch": torch}})
                return True
            except Exception:
                return False
        before = {{name: works(code) for name, code in probes.items()}}
        from score_s3prl import compat
        missing = compat.missing()
        installed = compat.apply()
        after = {{name: works(code) for name, code in probes.items()}}
        print(json.dumps([before, missing, installed, after, compat.apply()]))
    """)
    assert result.returncode == 0, result.stderr
    before, missing, installed, after, second = json.loads(result.stdout.strip().splitlines()[-1])
    names = list(compat.SHIMS)
    assert list(before) == names
    needed = [name for name in names if not before[name]]
    assert missing == needed and installed == needed  # exactly what the stack lacks, nothing else
    assert all(after.values()), after
    assert second == []  # idempotent
    if importlib.util.find_spec("torchcodec") is None:  # the pinned stack `make test` installs
        assert needed == names, before  # every shim is needed there


@pytest.fixture(scope="module", autouse=True)
def applied():
    compat.apply()


def test_load_matches_soundfile(speech_path):
    import torchaudio

    wav, rate = torchaudio.load(str(speech_path))
    data, sf_rate = soundfile.read(speech_path, dtype="float32")
    assert rate == sf_rate == 16000
    assert wav.dtype == torch.float32 and wav.shape == (1, len(data))
    assert torch.equal(wav[0], torch.from_numpy(data))
    part, _ = torchaudio.load(speech_path, frame_offset=100, num_frames=50, channels_first=False)
    assert part.shape == (50, 1) and torch.equal(part[:, 0], wav[0, 100:150])
    with open(speech_path, "rb") as handle:
        from_handle, _ = torchaudio.load(handle)
    assert torch.equal(from_handle, wav)


def test_load_and_info_stereo_wav(tmp_path):
    import torchaudio

    data = np.stack([np.linspace(-0.5, 0.5, 800), np.full(800, 0.25)], axis=1).astype(np.float32)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, data, 8000, subtype="PCM_16")
    wav, rate = torchaudio.load(path)
    assert rate == 8000 and wav.shape == (2, 800)
    assert torch.allclose(wav, torch.from_numpy(data.T), atol=1 / 32768)
    meta = torchaudio.info(str(path))
    assert (meta.sample_rate, meta.num_frames, meta.num_channels, meta.bits_per_sample, meta.encoding) == (
        8000, 800, 2, 16, "PCM_S")


def test_save_round_trips_like_sox_io(tmp_path, speech):
    import torchaudio

    loud = torch.stack([speech, -2 * speech])  # float32 beyond [-1, 1]: sox_io kept it (32-bit float)
    torchaudio.save(tmp_path / "loud.wav", loud, 16000)
    back, rate = torchaudio.load(tmp_path / "loud.wav")
    assert rate == 16000 and torch.equal(back, loud)
    assert torchaudio.info(tmp_path / "loud.wav").encoding == "PCM_F"

    torchaudio.save(tmp_path / "frames_first.wav", loud.t(), 8000, channels_first=False)
    assert torch.equal(torchaudio.load(tmp_path / "frames_first.wav")[0], loud)

    torchaudio.save(tmp_path / "pcm.wav", speech, 16000, encoding="PCM_S", bits_per_sample=16)
    meta = torchaudio.info(tmp_path / "pcm.wav")
    assert (meta.num_channels, meta.bits_per_sample, meta.encoding) == (1, 16, "PCM_S")
    assert torch.allclose(torchaudio.load(tmp_path / "pcm.wav")[0][0], speech, atol=1 / 32768)

    torchaudio.save(tmp_path / "speech.flac", speech, 16000)  # FLAC holds no floats: 16-bit PCM
    meta = torchaudio.info(tmp_path / "speech.flac")
    assert (meta.encoding, meta.bits_per_sample) == ("FLAC", 16)
    with pytest.raises(ScoreError, match="encoding 'PCM_X'"):
        torchaudio.save(tmp_path / "bad.wav", speech, 16000, encoding="PCM_X")


def test_info_flac(speech_path, speech):
    import torchaudio

    meta = torchaudio.info(speech_path)
    assert (meta.sample_rate, meta.num_frames, meta.num_channels, meta.encoding) == (16000, len(speech), 1, "FLAC")


def test_bad_audio_names_the_file(tmp_path):
    import torchaudio

    corrupt = tmp_path / "corrupt.flac"
    corrupt.write_bytes(b"not audio at all" * 10)
    for call in (torchaudio.load, torchaudio.info):
        with pytest.raises(AudioError, match="corrupt.flac"):
            call(str(corrupt))
    with pytest.raises(AudioError, match="missing.wav: audio file not found"):
        torchaudio.load(str(tmp_path / "missing.wav"))


def test_sox_effects_channels_rate_gain(tmp_path):
    from torchaudio.sox_effects import apply_effects_file, apply_effects_tensor

    t = torch.arange(16000) / 16000
    stereo = torch.stack([torch.sin(2 * torch.pi * 440 * t), 0.5 * torch.sin(2 * torch.pi * 440 * t)]) * 0.5
    mono, rate = apply_effects_tensor(stereo, 16000, [["channels", "1"]])
    assert rate == 16000 and torch.allclose(mono[0], stereo.mean(0))
    down, rate = apply_effects_tensor(mono, 16000, [["rate", "8000"]])
    assert rate == 8000 and down.shape == (1, 8000)
    sine_8k = 0.75 * torch.sin(2 * torch.pi * 440 * torch.arange(8000) / 8000) * 0.5
    assert torch.allclose(down[0, 200:-200], sine_8k[200:-200], atol=1e-3)  # same tone, away from the edges
    quieter, _ = apply_effects_tensor(mono, 16000, [["gain", "-3.0"]])
    assert torch.allclose(quieter, mono * 10 ** (-3 / 20))
    up, _ = apply_effects_tensor(mono, 16000, [["channels", "2"]])
    assert torch.equal(up[0], up[1])

    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo.T.numpy(), 16000, subtype="FLOAT")
    effects = [["channels", "1"], ["rate", "8000"], ["gain", "-3.0"]]
    from_file, rate = apply_effects_file(str(path), effects)
    expected, _ = apply_effects_tensor(stereo, 16000, effects)
    assert rate == 8000 and torch.allclose(from_file, expected, atol=1e-6)


def test_sox_effects_refuse_other_effects():
    from torchaudio.sox_effects import apply_effects_tensor

    with pytest.raises(compat.UnsupportedEffectError, match="'norm' is not supported"):
        apply_effects_tensor(torch.zeros(1, 100), 16000, [["norm"]])
    with pytest.raises(compat.UnsupportedEffectError, match="gain -n"):
        apply_effects_tensor(torch.zeros(1, 100), 16000, [["gain", "-n"]])
    for effect in (["rate", "16k"], ["channels"], ["channels", "1", "2"], ["gain", "-3", "-3"]):
        with pytest.raises(compat.UnsupportedEffectError, match=re.escape(f"sox effect '{' '.join(effect)}'")):
            apply_effects_tensor(torch.zeros(1, 100), 8000, [effect])


def test_huggingface_stand_ins_explain_themselves():
    from huggingface_hub import HfFolder, Repository

    with pytest.raises(ScoreError, match="HfFolder.save_token"):
        HfFolder.save_token("token")
    with pytest.raises(ScoreError, match="push_to_hf_hub"):
        Repository(local_dir="x", clone_from="y")


def test_torch_load_accepts_namespace():
    buffer = io.BytesIO()
    torch.save({"Args": argparse.Namespace(mode="train", seed=1)}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, map_location="cpu")["Args"].seed == 1
