"""Make stock s3prl 0.4.18 import and run on torch/torchaudio >= 2.9 and huggingface_hub >= 1.0.

:func:`apply` restores only what s3prl uses, and only what the installed libraries lack
(DESIGN.md section 2): each shim has a test for "is it missing here?" and an installer, so on
an older stack nothing is touched and a second call changes nothing.

==========================  =============================================================
shim                        why s3prl needs it
==========================  =============================================================
``set_audio_backend``       ``run_downstream.py`` and modules ``s3prl.hub`` imports call it
``torchaudio.info``         ``s3prl.util.audio_info`` (metadata of audio files)
``torchaudio.load``         the ASR / PR datasets; torchaudio >= 2.9 needs torchcodec for it
``torchaudio.save``         ``s3prl.util.pseudo_data`` (s3prl's own tests); needs torchcodec too
``audio_info`` workers      ``s3prl.util.audio_info`` calls ``torchaudio.info`` in joblib worker
                            processes, which start without these shims: run it in threads
``torchaudio.sox_effects``  QbE (``channels 1, rate 16000, gain -3``) and upstream imports
``HfFolder``                imported by ``run_downstream.py`` and ``downstream/runner.py``
``Repository``              imported by ``downstream/runner.py``
``Namespace`` in torch.load s3prl's ``states-*.ckpt`` hold an ``argparse.Namespace`` (``-e``)
==========================  =============================================================
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import types
import warnings
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Sequence

import soundfile
import torch

from .audio import AudioError, audio_info, read_audio
from .errors import ScoreError

# Encoding names as torchaudio's sox_io backend reports them, by soundfile subtype.
_ENCODINGS = {
    "PCM_S8": "PCM_S", "PCM_16": "PCM_S", "PCM_24": "PCM_S", "PCM_32": "PCM_S",
    "PCM_U8": "PCM_U", "FLOAT": "PCM_F", "DOUBLE": "PCM_F", "ULAW": "ULAW", "ALAW": "ALAW",
}
_BITS = {"PCM_S8": 8, "PCM_U8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "FLOAT": 32,
         "DOUBLE": 64, "ULAW": 8, "ALAW": 8}
_FORMAT_ENCODINGS = {"FLAC": "FLAC", "OGG": "VORBIS", "MP3": "MP3"}


@dataclass
class AudioMetaData:
    """What ``torchaudio.info`` returned before torchaudio 2.9 (same field names)."""

    sample_rate: int  # Hz
    num_frames: int  # samples per channel
    num_channels: int
    bits_per_sample: int  # 0 where the format has no fixed sample width
    encoding: str  # "PCM_S", "PCM_F", "FLAC", ...


def _name(uri: Any) -> str:
    return os.fspath(uri) if isinstance(uri, (str, os.PathLike)) else repr(uri)


def info(uri: str | os.PathLike | BinaryIO, format: str | None = None, **_: Any) -> AudioMetaData:
    """Metadata of an audio file, as ``torchaudio.info`` gave it (read with soundfile).

    Raises:
        AudioError: the file is missing or not decodable audio.
    """
    meta = audio_info(uri)
    encoding = _FORMAT_ENCODINGS.get(meta.format, _ENCODINGS.get(meta.subtype, "UNKNOWN"))
    return AudioMetaData(
        sample_rate=int(meta.samplerate),
        num_frames=int(meta.frames),
        num_channels=int(meta.channels),
        bits_per_sample=_BITS.get(meta.subtype, 0),
        encoding=encoding,
    )


def load(
    uri: str | os.PathLike | BinaryIO,
    frame_offset: int = 0,
    num_frames: int = -1,
    normalize: bool = True,
    channels_first: bool = True,
    format: str | None = None,
    buffer_size: int = 4096,
    backend: str | None = None,
) -> tuple[torch.Tensor, int]:
    """``torchaudio.load`` on soundfile: the file as stored, no resampling or downmixing.

    ``format``, ``buffer_size`` and ``backend`` are accepted and ignored, as torchaudio >= 2.9 does.

    Returns:
        (waveform, sample_rate): float32 in [-1, 1] of shape (channels, frames), or
        (frames, channels) with ``channels_first=False``; the file's rate in Hz.
    Raises:
        AudioError: naming the file, when it is missing, corrupt or empty.
    """
    if not normalize:
        # torchaudio >= 2.9 ignores it the same way: integer output is gone.
        warnings.warn("torchaudio.load: normalize=False is ignored, returning float32", stacklevel=2)
    if isinstance(uri, (str, os.PathLike)):
        wav, sample_rate = read_audio(uri)
    else:
        try:
            data, sample_rate = soundfile.read(uri, dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioError(f"{_name(uri)}: cannot decode audio ({exc})") from exc
        wav = torch.from_numpy(data.T.copy())
    end = None if num_frames < 0 else frame_offset + num_frames
    wav = wav[:, frame_offset:end].contiguous()  # s3prl's datasets call .view(-1) on it
    return (wav if channels_first else wav.t().contiguous()), int(sample_rate)


# soundfile subtype by (encoding, bits_per_sample) as torchaudio's sox_io backend named them.
_SUBTYPES = {("PCM_S", 8): "PCM_S8", ("PCM_S", 16): "PCM_16", ("PCM_S", 24): "PCM_24",
             ("PCM_S", 32): "PCM_32", ("PCM_U", 8): "PCM_U8", ("PCM_F", 32): "FLOAT",
             ("PCM_F", 64): "DOUBLE", ("ULAW", 8): "ULAW", ("ALAW", 8): "ALAW"}
# Without an encoding, the sample type picks one (float data is written as float, as sox_io did).
_DTYPE_SUBTYPES = {torch.float32: "FLOAT", torch.float64: "DOUBLE", torch.int16: "PCM_16",
                   torch.int32: "PCM_32", torch.uint8: "PCM_U8"}


def save(
    uri: str | os.PathLike,
    src: torch.Tensor,
    sample_rate: int,
    channels_first: bool = True,
    format: str | None = None,
    encoding: str | None = None,
    bits_per_sample: int | None = None,
    buffer_size: int = 4096,
    backend: str | None = None,
    compression: float | int | None = None,
) -> None:
    """``torchaudio.save`` on soundfile (torchaudio >= 2.9 needs torchcodec for it).

    Args:
        uri: output path; its suffix picks the container unless ``format`` names one.
        src: waveform of shape (channels, frames), or (frames, channels) with
            ``channels_first=False``; a 1-D tensor is one channel.
        sample_rate: Hz.
        encoding, bits_per_sample: as torchaudio named them (``"PCM_S"``, 16); otherwise the
            tensor's dtype decides (float32 is written as 32-bit float, values not clipped),
            falling back to the container's default where it cannot hold that sample type.
    ``buffer_size``, ``backend`` and ``compression`` are accepted and ignored.
    """
    wav = src.detach().cpu()
    if wav.dim() == 1:
        wav = wav.unsqueeze(0 if channels_first else 1)
    frames_first = (wav.t() if channels_first else wav).contiguous()
    container = (format or os.path.splitext(os.fspath(uri))[1].lstrip(".") or "wav").upper()
    if encoding is not None:
        subtype = _SUBTYPES.get((encoding, bits_per_sample or 16))
        if subtype is None:
            raise ScoreError(f"torchaudio.save: encoding {encoding!r} with {bits_per_sample} bits is not supported")
    else:
        subtype = _DTYPE_SUBTYPES.get(wav.dtype)
    if subtype is not None and not soundfile.check_format(container, subtype):
        subtype = None  # e.g. FLAC holds no float samples: the container's default (16-bit PCM)
    soundfile.write(os.fspath(uri), frames_first.numpy(), int(sample_rate), subtype=subtype, format=container)


def set_audio_backend(backend: str | None) -> None:
    """No-op: torchaudio >= 2.9 has a single decoder and s3prl only names the default one."""


# --- torchaudio.sox_effects: the effects s3prl's recipes use -----------------------------


class UnsupportedEffectError(ScoreError):
    """A sox effect this stand-in does not implement."""


def _number(name: str, args: Sequence[str], convert: Callable[[str], Any]) -> Any:
    """The single numeric argument of sox effect ``name`` (sox's suffixes such as ``16k`` are not read)."""
    try:
        (text,) = args
        return convert(text)
    except ValueError:
        raise UnsupportedEffectError(
            f"sox effect '{' '.join([name, *args])}': only '{name} <number>' is supported"
        ) from None


def _channels(wav: torch.Tensor, sample_rate: int, args: Sequence[str]) -> tuple[torch.Tensor, int]:
    target = _number("channels", args, int)
    if target == wav.shape[0]:
        return wav, sample_rate
    if target == 1:  # sox mixes all channels with equal weight
        return wav.mean(dim=0, keepdim=True), sample_rate
    if wav.shape[0] == 1:
        return wav.expand(target, -1).clone(), sample_rate
    raise UnsupportedEffectError(f"sox effect 'channels {target}' from {wav.shape[0]} channels is not supported")


def _rate(wav: torch.Tensor, sample_rate: int, args: Sequence[str]) -> tuple[torch.Tensor, int]:
    import torchaudio.functional as AF

    target = int(_number("rate", args, float))
    if target == sample_rate:
        return wav, sample_rate
    return AF.resample(wav, sample_rate, target), target


def _gain(wav: torch.Tensor, sample_rate: int, args: Sequence[str]) -> tuple[torch.Tensor, int]:
    return wav * 10.0 ** (_number("gain", args, float) / 20.0), sample_rate


_EFFECTS: dict[str, Callable[[torch.Tensor, int, Sequence[str]], tuple[torch.Tensor, int]]] = {
    "channels": _channels,
    "rate": _rate,
    "gain": _gain,
}


def apply_effects_tensor(
    tensor: torch.Tensor,
    sample_rate: int,
    effects: Sequence[Sequence[str]],
    channels_first: bool = True,
) -> tuple[torch.Tensor, int]:
    """Apply sox effects ``channels N``, ``rate HZ`` and ``gain DB`` in order.

    ``channels 1`` averages the channels as sox does; ``rate`` resamples with
    ``torchaudio.functional.resample`` (windowed sinc), so results differ from sox's own
    filter in the last bits.

    Args:
        tensor: float waveform of shape (channels, frames), or (frames, channels) with
            ``channels_first=False``.
    Returns:
        (waveform, sample_rate) in the same layout.
    Raises:
        UnsupportedEffectError: naming any other effect (s3prl's ASR/PR/QbE recipes use only these).
    """
    wav = tensor if channels_first else tensor.t()
    wav = wav.float()
    for effect in effects:
        name, *args = [str(part) for part in effect]
        if name not in _EFFECTS:
            raise UnsupportedEffectError(
                f"sox effect {name!r} is not supported by score_s3prl's torchaudio.sox_effects stand-in "
                f"(supported: {', '.join(_EFFECTS)})"
            )
        wav, sample_rate = _EFFECTS[name](wav, sample_rate, args)
    return (wav if channels_first else wav.t().contiguous()), sample_rate


def apply_effects_file(
    path: str | os.PathLike,
    effects: Sequence[Sequence[str]],
    normalize: bool = True,
    channels_first: bool = True,
    format: str | None = None,
) -> tuple[torch.Tensor, int]:
    """Read ``path`` and apply :func:`apply_effects_tensor` (same layout and return types)."""
    wav, sample_rate = load(path, normalize=normalize)
    return apply_effects_tensor(wav, sample_rate, effects, channels_first=channels_first)


# --- huggingface_hub stand-ins ------------------------------------------------------------


class HfFolder:
    """Stand-in for the token helper removed in huggingface_hub 1.0 (s3prl imports it)."""

    @staticmethod
    def get_token() -> str | None:
        from huggingface_hub import get_token

        return get_token()

    @staticmethod
    def save_token(token: str) -> None:
        raise ScoreError(
            "huggingface_hub >= 1.0 removed HfFolder.save_token: s3prl's --hub huggingface login "
            "does not work on this stack; run `hf auth login` and use a local checkpoint (-k)"
        )


class Repository:
    """Stand-in for the git-based repository class removed in huggingface_hub 1.0."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ScoreError(
            "huggingface_hub >= 1.0 removed Repository: s3prl's --push_to_hf_hub is not supported "
            "on this stack; upload the experiment directory with `hf upload` instead"
        )


# --- the shims ----------------------------------------------------------------------------


def _torchaudio_lacks(name: str) -> bool:
    import torchaudio

    return not hasattr(torchaudio, name)


def _needs_torchcodec(name: str, stand_in: Callable[..., Any]) -> bool:
    import torchaudio

    # torchaudio >= 2.9 reads and writes through torchcodec only (and names a <name>_with_torchcodec).
    return (
        hasattr(torchaudio, f"{name}_with_torchcodec")
        and importlib.util.find_spec("torchcodec") is None
        and getattr(torchaudio, name) is not stand_in
    )


def _install_torchaudio(name: str, value: Any) -> None:
    import torchaudio

    setattr(torchaudio, name, value)


def _sox_effects_missing() -> bool:
    if "torchaudio.sox_effects" in sys.modules:
        return False
    return importlib.util.find_spec("torchaudio.sox_effects") is None


def _install_sox_effects() -> None:
    import torchaudio

    module = types.ModuleType("torchaudio.sox_effects", "score_s3prl stand-in: channels, rate, gain")
    module.apply_effects_tensor = apply_effects_tensor
    module.apply_effects_file = apply_effects_file
    sys.modules["torchaudio.sox_effects"] = module
    torchaudio.sox_effects = module


def _threaded_parallel(*args: Any, **kwargs: Any) -> Any:
    """``joblib.Parallel`` preferring threads: workers then share this process's shims."""
    import joblib

    kwargs.setdefault("prefer", "threads")
    return joblib.Parallel(*args, **kwargs)


def _audio_info_in_processes() -> bool:
    import torchaudio

    native = all(getattr(torchaudio, name, stand_in) is not stand_in
                 for name, stand_in in (("info", info), ("set_audio_backend", set_audio_backend)))
    if native:  # worker processes import a torchaudio that has what s3prl calls
        return False
    import s3prl.util.audio_info as audio_info

    return audio_info.Parallel is not _threaded_parallel


def _install_threaded_audio_info() -> None:
    import s3prl.util.audio_info as audio_info

    audio_info.Parallel = _threaded_parallel


def _hf_lacks(name: str) -> bool:
    import huggingface_hub

    return not hasattr(huggingface_hub, name)


def _install_hf(name: str, value: Any) -> None:
    import huggingface_hub

    setattr(huggingface_hub, name, value)


def _namespace_refused() -> bool:
    """True when torch.load (weights_only by default since torch 2.6) refuses a Namespace."""
    from .checkpoints.safeload import default_load_refuses

    return default_load_refuses({"Args": argparse.Namespace(mode="train")})


def _allow_namespace() -> None:
    torch.serialization.add_safe_globals([argparse.Namespace])


# name -> (is it missing on this stack?, install it)
SHIMS: dict[str, tuple[Callable[[], bool], Callable[[], None]]] = {
    "torchaudio.set_audio_backend": (
        lambda: _torchaudio_lacks("set_audio_backend"),
        lambda: _install_torchaudio("set_audio_backend", set_audio_backend),
    ),
    "torchaudio.info": (lambda: _torchaudio_lacks("info"), lambda: _install_torchaudio("info", info)),
    "torchaudio.load": (lambda: _needs_torchcodec("load", load), lambda: _install_torchaudio("load", load)),
    "torchaudio.save": (lambda: _needs_torchcodec("save", save), lambda: _install_torchaudio("save", save)),
    "torchaudio.sox_effects": (_sox_effects_missing, _install_sox_effects),
    "s3prl.util.audio_info workers": (_audio_info_in_processes, _install_threaded_audio_info),
    "huggingface_hub.HfFolder": (lambda: _hf_lacks("HfFolder"), lambda: _install_hf("HfFolder", HfFolder)),
    "huggingface_hub.Repository": (
        lambda: _hf_lacks("Repository"),
        lambda: _install_hf("Repository", Repository),
    ),
    "torch.load(argparse.Namespace)": (_namespace_refused, _allow_namespace),
}


def missing() -> list[str]:
    """Names of the shims this stack needs and does not have yet."""
    return [name for name, (is_missing, _) in SHIMS.items() if is_missing()]


def apply() -> list[str]:
    """Install every shim this stack lacks; returns their names (empty when nothing was missing).

    Idempotent: a shim, once installed, is no longer missing.
    """
    installed = missing()
    for name in installed:
        SHIMS[name][1]()
    return installed
