"""Base-model loading: hubert_base download, converted and fairseq .pt files, transformers dirs."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from score_s3prl.checkpoints.bases import HUBERT_BASE_URL, load_base_state
from score_s3prl.checkpoints.hubert import build_hubert, tiny_hubert_state, write_converted
from score_s3prl.errors import ScoreError
from score_s3prl.model import last_layer_features


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _assert_same_weights(state: dict, reference: dict) -> None:
    assert state["model_weight"].keys() == reference["model_weight"].keys()
    for name, value in reference["model_weight"].items():
        assert torch.equal(state["model_weight"][name], value), name


def test_hubert_base_url_is_the_one_s3prl_uses():
    from s3prl.upstream.hubert import hubconf

    assert HUBERT_BASE_URL in inspect.getsource(hubconf.hubert_base)


def test_hubert_base_is_fetched_into_s3prls_cache(monkeypatch, tiny_ckpt, tmp_path):
    from s3prl.util import download

    from score_s3prl.checkpoints import bases
    from score_s3prl.checkpoints.download import cache_path

    monkeypatch.setattr(download, "_download_dir", tmp_path / "cache")
    monkeypatch.setitem(bases.BASE_URLS, "hubert_base", Path(tiny_ckpt).as_uri())
    state, identity = load_base_state("hubert_base")
    assert identity == f"hubert_base sha256:{_sha256(tiny_ckpt)}"
    assert cache_path(bases.BASE_URLS["hubert_base"]).is_file()  # s3prl's own cache name for the URL
    _assert_same_weights(state, torch.load(tiny_ckpt, weights_only=True))


def test_hubert_base_offline_is_a_clear_error(monkeypatch, tmp_path):
    from s3prl.util import download

    from score_s3prl.checkpoints import bases

    monkeypatch.setattr(download, "_download_dir", tmp_path / "cache")
    monkeypatch.setitem(bases.BASE_URLS, "hubert_base", "http://127.0.0.1:9/hubert_base_ls960.pt")
    with pytest.raises(ScoreError, match="hubert_base: http://127.0.0.1:9/hubert_base_ls960.pt: cannot download "
                                         r"checkpoint \(Connection refused\).*pass a local checkpoint"):
        load_base_state("hubert_base")


def test_local_converted_checkpoint(tiny_ckpt):
    state, identity = load_base_state(str(tiny_ckpt))
    assert identity == f"local:{tiny_ckpt.resolve()} sha256:{_sha256(tiny_ckpt)}"
    _assert_same_weights(state, torch.load(tiny_ckpt, weights_only=True))


# ----------------------------------------------------------------------------- fairseq


class _RunsCode:
    """Pickles as a call of os.getcwd: a stand-in for a malicious checkpoint payload."""

    def __reduce__(self):
        return (os.getcwd, ())


def _write_fairseq(path, monkeypatch, cfg_as_omegaconf=False, model_name="hubert", extra=None):
    """A fairseq-layout HuBERT checkpoint holding a pickled fairseq Dictionary.

    A fake ``fairseq.data.dictionary`` module exists only while saving, so loading runs as on a
    machine without fairseq.
    """
    tiny = tiny_hubert_state(0)
    cfg = {
        "common": {"seed": 1},
        "model": {"_name": model_name, **tiny["model_cfg"]},
        "task": {"_name": "hubert_pretraining", "data": "/data/manifests", "labels": ["km"], **tiny["task_cfg"]},
    }
    if cfg_as_omegaconf:
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(cfg)
    with monkeypatch.context() as patch:
        Dictionary = type("Dictionary", (), {"__module__": "fairseq.data.dictionary"})
        for name in ("fairseq", "fairseq.data", "fairseq.data.dictionary"):
            patch.setitem(sys.modules, name, types.ModuleType(name))
        sys.modules["fairseq.data.dictionary"].Dictionary = Dictionary
        dictionary = Dictionary()
        dictionary.__dict__.update(symbols=tiny["dictionaries_symbols"][0], count=[1] * 8, nspecial=0)
        state = {
            "args": None,
            "cfg": cfg,
            "model": OrderedDict(tiny["model_weight"]),
            "criterion": None,
            "optimizer_history": [{"optimizer_name": "FairseqAdam", "num_updates": 400000}],
            "task_state": {"dictionaries": [dictionary]},
            "extra_state": {"epoch": 3, "metrics": OrderedDict()},
            **(extra or {}),
        }
        torch.save(state, path)
    assert "fairseq" not in sys.modules
    return tiny


@pytest.mark.parametrize("cfg_as_omegaconf", [False, True])
def test_fairseq_checkpoint_converts_without_fairseq(tmp_path, monkeypatch, cfg_as_omegaconf, speech):
    path = tmp_path / "hubert_fairseq.pt"
    tiny = _write_fairseq(path, monkeypatch, cfg_as_omegaconf)
    state, identity = load_base_state(str(path))
    assert identity == f"local:{path.resolve()} sha256:{_sha256(path)}"
    _assert_same_weights(state, tiny)
    assert state["dictionaries_symbols"] == tiny["dictionaries_symbols"]
    assert state["model_cfg"]["encoder_layers"] == 4 and state["task_cfg"]["sample_rate"] == 16000
    # and it is usable as the converted format: written, it loads in s3prl's hubert_local
    from s3prl.upstream.hubert.expert import UpstreamExpert

    write_converted(tmp_path / "converted.pt", **state)
    upstream = UpstreamExpert(str(tmp_path / "converted.pt")).eval()
    reference, _ = build_hubert(tiny)
    with torch.no_grad():
        expected, _ = last_layer_features(reference, speech[None, :16000], torch.tensor([16000]))
        torch.testing.assert_close(upstream([speech[:16000]])["hidden_states"][-1], expected, atol=1e-6, rtol=0)


def test_fairseq_checkpoint_of_another_model_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "w2v.pt"
    _write_fairseq(path, monkeypatch, model_name="wav2vec2")
    with pytest.raises(ScoreError, match="w2v.pt: a fairseq 'wav2vec2' checkpoint, not a HuBERT one"):
        load_base_state(str(path))


def test_fairseq_checkpoint_cannot_run_code(tmp_path, monkeypatch):
    path = tmp_path / "evil.pt"
    _write_fairseq(path, monkeypatch, extra={"payload": _RunsCode()})
    with pytest.raises(ScoreError, match=r"evil.pt: not a loadable checkpoint: it names posix\.getcwd.*nothing was run"):
        load_base_state(str(path))


# ----------------------------------------------------------------------------- transformers

HF_TINY = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
)


def _legacy_weight_norm_names(directory) -> None:
    """Re-save as pytorch_model.bin with old-style weight_g/weight_v names (as on the Hub)."""
    from safetensors.torch import load_file

    weights = load_file(str(directory / "model.safetensors"))
    renamed = {
        name.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v"
        ): value
        for name, value in weights.items()
    }
    assert any(name.endswith("weight_g") for name in renamed)
    torch.save(renamed, directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["base_like", "large_like_ctc"])
def test_transformers_directory_gives_the_same_model(tmp_path, speech, variant):
    import transformers

    torch.manual_seed(0)
    if variant == "base_like":
        hf = transformers.HubertModel(transformers.HubertConfig(**HF_TINY))
    else:  # pre-LN, layer-norm CNN with biases, a CTC head, legacy names, normalising preprocessor
        config = transformers.HubertConfig(
            **HF_TINY, do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True, vocab_size=12
        )
        hf = transformers.HubertForCTC(config)
    hf.save_pretrained(tmp_path)
    if variant != "base_like":
        _legacy_weight_norm_names(tmp_path)
        (tmp_path / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True, "sampling_rate": 16000}))
        hf = hf.hubert
    state, identity = load_base_state(str(tmp_path))
    weights_file = tmp_path / ("model.safetensors" if variant == "base_like" else "pytorch_model.bin")
    assert identity == f"hf:{tmp_path.resolve()} sha256:{_sha256(weights_file)}"
    assert state["task_cfg"]["normalize"] is (variant != "base_like")

    model, _ = build_hubert(state)
    wav = speech[:48000]
    hf_input = F.layer_norm(wav, wav.shape) if variant != "base_like" else wav
    with torch.no_grad():
        expected = hf.eval()(input_values=hf_input[None]).last_hidden_state
        ours, _ = last_layer_features(model, wav[None], torch.tensor([wav.numel()]), state["task_cfg"]["normalize"])
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_transformers_directory_of_another_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ScoreError, match="config.json: model_type is 'wav2vec2', expected 'hubert'"):
        load_base_state(str(tmp_path))


# ----------------------------------------------------------------------------- bad input


def _wrong_shapes(path):
    state = tiny_hubert_state(0)
    state["model_cfg"] = {**state["model_cfg"], "encoder_embed_dim": 64}
    write_converted(path, **state)


def _not_hubert_config(path):
    state = tiny_hubert_state(0)
    state["model_cfg"] = {"encoder_type": "conformer-xl"}
    write_converted(path, **state)


@pytest.mark.parametrize(
    "make, problem",
    [
        (_wrong_shapes, "weights do not fit the model config: .*wrong shapes"),
        (_not_hubert_config, "not a HuBERT model config"),
        (lambda path: torch.save({"state_dict": {}, "epoch": 3}, path), "neither an s3prl converted HuBERT"),
        (lambda path: path.write_text("not a checkpoint"), r"not a PyTorch checkpoint \(it starts with b.not ., neither a zip archive nor a pickle\)"),
        (lambda path: torch.save([1, 2], path), "checkpoint is a list"),
        (lambda path: None, "base model not found"),
    ],
)
def test_wrong_base_checkpoints_are_clear_errors(tmp_path, make, problem):
    path = tmp_path / "base.pt"
    make(path)
    with pytest.raises(ScoreError, match=f"base.pt: {problem}"):
        load_base_state(str(path))


def test_wavlm_base_url_is_the_one_s3prl_uses():
    from s3prl.upstream.wavlm import hubconf

    from score_s3prl.checkpoints.bases import WAVLM_BASE_URL

    assert WAVLM_BASE_URL in inspect.getsource(hubconf.wavlm_base)


def test_wavlm_base_and_local_wavlm_files_load_in_their_own_format(monkeypatch, tiny_wavlm_ckpt):
    from score_s3prl.checkpoints import base_architecture, download
    from score_s3prl.checkpoints.bases import WAVLM_BASE_URL

    calls = []
    monkeypatch.setattr(download, "fetch",
                        lambda url, refresh=False, validate=None: calls.append(url) or tiny_wavlm_ckpt)
    state, identity = load_base_state("wavlm_base")
    assert calls == [WAVLM_BASE_URL] and identity.startswith("wavlm_base sha256:")
    local, identity = load_base_state(str(tiny_wavlm_ckpt))
    assert identity.startswith("local:") and base_architecture(local) == "wavlm"
    reference = torch.load(tiny_wavlm_ckpt, weights_only=True)
    assert local["cfg"] == reference["cfg"]
    assert all(torch.equal(local["model"][k], v) for k, v in reference["model"].items())


def test_wavlm_with_wrong_weights_is_a_clear_error(tmp_path):
    from score_s3prl.checkpoints.wavlm import tiny_wavlm_state, write_wavlm

    state = tiny_wavlm_state(0)
    del state["model"]["encoder.layers.0.self_attn.relative_attention_bias.weight"]
    write_wavlm(tmp_path / "bad.pt", **state)
    with pytest.raises(ScoreError, match="missing weights encoder.layers.0.self_attn.relative_attention_bias"):
        load_base_state(str(tmp_path / "bad.pt"))
