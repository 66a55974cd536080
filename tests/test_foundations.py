"""Audio loading, atomic writes and converted-checkpoint I/O."""

import numpy as np
import pytest
import soundfile
import torch

from score_s3prl.audio import AudioError, load_audio
from score_s3prl.checkpoints.hubert import build_hubert, read_converted, tiny_hubert_state, write_converted
from score_s3prl.errors import ScoreError
from score_s3prl.fileio import atomic_open


def test_load_audio_real_speech(speech_path):
    wav = load_audio(speech_path)
    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert wav.numel() == soundfile.info(str(speech_path)).frames
    assert 0.01 < wav.abs().max() <= 1.0


def test_load_audio_downmixes_and_resamples_with_warning(tmp_path, speech):
    stereo = np.stack([speech.numpy(), speech.numpy()], axis=1)[::2]  # 8 kHz, 2 channels
    path = tmp_path / "stereo8k.wav"
    soundfile.write(path, stereo, 8000)
    with pytest.warns(UserWarning, match="stereo8k.wav") as record:
        wav = load_audio(path)
    messages = " ".join(str(w.message) for w in record)
    assert "mono" in messages and "resampled" in messages
    assert abs(wav.numel() - 2 * stereo.shape[0]) <= 2


@pytest.mark.parametrize(
    "content, problem",
    [(None, "not found"), (b"RIFF\x00garbage", "cannot decode"), (b"", "cannot decode")],
)
def test_load_audio_bad_files_name_the_file(tmp_path, content, problem):
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioError, match=f"bad.wav.*{problem}"):
        load_audio(path)


def test_load_audio_too_short(tmp_path):
    path = tmp_path / "short.wav"
    soundfile.write(path, np.zeros(100, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="short.wav: too short"):
        load_audio(path, min_samples=400)


def test_atomic_open_keeps_old_content_on_failure(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as handle:
            handle.write("half-written")
            raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert list(tmp_path.iterdir()) == [path]


def test_converted_round_trip_and_frame_rate(tmp_path):
    path = tmp_path / "ckpt.pt"
    write_converted(path, **tiny_hubert_state(seed=1), score={"updates": 3})
    state = read_converted(path)
    assert state["score"] == {"updates": 3}
    model, _ = build_hubert(state, str(path))
    wav = torch.randn(1, 16000)
    features, _ = model.extract_features(wav, padding_mask=torch.zeros_like(wav, dtype=torch.bool))
    assert features.shape[1] == 16000 // 320 - 1  # conv receptive field eats one frame


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(ScoreError, match="nope.pt: checkpoint not found"):
        read_converted(tmp_path / "nope.pt")
    state = tiny_hubert_state()
    del state["model_cfg"]
    torch.save(state, tmp_path / "nocfg.pt")
    with pytest.raises(ScoreError, match="nocfg.pt: .*missing model_cfg"):
        read_converted(tmp_path / "nocfg.pt")
    state = tiny_hubert_state()
    state["model_weight"]["final_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(ScoreError, match="wide.pt: .*wrong shapes final_proj.weight"):
        build_hubert(state, str(tmp_path / "wide.pt"))
