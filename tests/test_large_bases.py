"""The Large configs on tiny models with Large's layout (24 pre-LN layers, layer-norm CNN,
normalised input): only the top layers and the norms train, stock s3prl loads the export with
our hidden states, and the transformers export matches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from score_s3prl.checkpoints import build_base
from score_s3prl.checkpoints.bases import BASE_URLS
from score_s3prl.checkpoints.common import TINY_CONV_LAYERS
from score_s3prl.checkpoints.hubert import random_hubert_state, write_converted
from score_s3prl.checkpoints.wavlm import write_wavlm
from score_s3prl.config import load_config
from score_s3prl.model import last_layer_features
from score_s3prl.train import train

REPO = Path(__file__).resolve().parents[1]
LAYERS = 24  # Large's depth at toy width
TINY = {"encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2, "final_dim": 16,
        "conv_feature_layers": TINY_CONV_LAYERS, "conv_pos": 16, "conv_pos_groups": 4}
LARGE_LAYOUT = {"encoder_layers": LAYERS, "layer_norm_first": True, "extractor_mode": "layer_norm"}


def tiny_large_state(arch: str, seed: int = 0) -> dict:
    """A random model with HuBERT / WavLM Large's layout: pre-LN, layer-norm CNN, normalised input."""
    if arch == "hubert":
        state = random_hubert_state({**TINY, **LARGE_LAYOUT}, seed)
        state["task_cfg"] = {**state["task_cfg"], "normalize": True}
        return state
    from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

    cfg = {**TINY, **LARGE_LAYOUT, "normalize": True, "conv_bias": False, "activation_fn": "gelu",
           "relative_position_embedding": True, "num_buckets": 32, "max_distance": 64, "gru_rel_pos": True}
    cfg.pop("final_dim")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = WavLM(WavLMConfig(cfg))
    return {"cfg": cfg, "model": model.state_dict()}


def weights(state: dict) -> dict:
    return state["model"] if "cfg" in state else state["model_weight"]


def finetune(config: Path, base: Path, assets_dir: Path, out: Path, **values) -> Path:
    """The config's method settings as they stand; data, steps and learning rate small enough for a CPU."""
    cfg = load_config(config, values_set={
        "init": str(base), "out": str(out), "device": "cpu", "data.root": str(assets_dir),
        "data.subsets": ["train-clean-100", "transcribed"], "data.mode": "crops", "data.crop_seconds": 3.0,
        "data.batch_size": 2, "data.batch_seconds": 40.0, "optim.total_updates": 3, "optim.warmup_updates": 1,
        "optim.utterances_per_update": 2, "optim.lr": 1.0e-3, **values})
    return train(cfg)


@pytest.fixture(scope="module", params=["hubert", "wavlm"])
def large_base(request, tmp_path_factory) -> tuple[str, Path]:
    arch = request.param
    path = tmp_path_factory.mktemp("large") / f"tiny_{arch}_large.pt"
    state = tiny_large_state(arch)
    (write_wavlm if arch == "wavlm" else write_converted)(path, **state)
    return arch, path


def test_large_configs_state_the_large_choices():
    for arch in ("hubert", "wavlm"):
        path = REPO / "upstream_configs" / f"score_{arch}_large.yaml"
        cfg = load_config(path)
        base = load_config(REPO / "upstream_configs" / f"score_{arch}_base.yaml")
        assert cfg.init == {"hubert": "hubert_large_ll60k", "wavlm": "wavlm_large"}[arch]
        assert cfg.init in BASE_URLS  # a named base: --init downloads it, `score-s3prl fetch` caches it
        assert cfg.model.trainable_layers == 4 and cfg.model.train_final_norm
        # everything else is the Base recipe
        differ = {key for key in ("views", "loss", "laser", "optim", "data")
                  if getattr(cfg, key) != getattr(base, key)}
        assert not differ and cfg.model.head == base.model.head and cfg.method == "score"
        for line in path.read_text().splitlines():  # every setting says where it comes from
            if line.strip() and not line.startswith("#") and not line.rstrip().endswith(":"):
                assert "#" in line and (line.split("#", 1)[1].strip().startswith(("[", "LASER only"))), line


@pytest.mark.slow  # two fine-tuning runs of a 24-layer model, stock s3prl and transformers loads
def test_large_recipe_trains_the_top_layers_and_exports_what_stock_s3prl_loads(large_base, assets_dir, tmp_path,
                                                                                 speech):
    from score_s3prl import hub
    from score_s3prl.cli import main as cli

    arch, base_path = large_base
    config = REPO / "upstream_configs" / f"score_{arch}_large.yaml"
    export_path = finetune(config, base_path, assets_dir, tmp_path / "run")
    base, tuned = (torch.load(p, weights_only=True) for p in (base_path, export_path))
    changed = {k for k, v in weights(base).items() if not torch.equal(v, weights(tuned)[k])}
    top = tuple(f"encoder.layers.{i}." for i in range(LAYERS - 4, LAYERS))
    assert all(k.startswith((*top, "encoder.layer_norm.", "layer_norm.")) for k in changed), sorted(changed)
    for prefix in (*top, "encoder.layer_norm.", "layer_norm."):  # each trained part moved
        assert any(k.startswith(prefix) for k in changed), prefix

    hub.register()
    import s3prl.hub

    stock = getattr(s3prl.hub, f"{arch}_local")(ckpt=str(export_path)).eval()
    ours = getattr(s3prl.hub, f"score_{arch}_local")(ckpt=str(export_path)).eval()
    with torch.no_grad():
        theirs, mine = (u([speech])["hidden_states"] for u in (stock, ours))
        model, normalize = build_base(tuned, "export")
        assert normalize  # Large normalises the waveform
        frames, _ = last_layer_features(model, speech[None], torch.tensor([speech.numel()]), normalize)
    assert len(theirs) == LAYERS + 1 and all(torch.equal(a, b) for a, b in zip(mine, theirs))
    torch.testing.assert_close(frames, theirs[-1], rtol=0, atol=1e-5)

    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    out = tmp_path / "hf"
    assert cli(["export", str(export_path), "--format", "hf", str(out)]) == 0
    cls = transformers.HubertModel if arch == "hubert" else transformers.WavLMModel
    hf_model = cls.from_pretrained(out).eval()
    assert hf_model.config.do_stable_layer_norm and hf_model.config.feat_extract_norm == "layer"
    wav = torch.nn.functional.layer_norm(speech, speech.shape)  # as s3prl normalises (eps 1e-5)
    with torch.no_grad():
        hf_out = hf_model(wav[None], output_hidden_states=True)
    # transformers 5 records a pre-LN encoder's hidden_states[-1] before the final norm;
    # last_hidden_state is after it, as s3prl's last hidden state (and SCORE's features) are.
    hf_states = (*hf_out.hidden_states[:-1], hf_out.last_hidden_state)
    assert len(hf_states) == len(theirs)
    for a, b in zip(hf_states, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


@pytest.mark.slow  # one fine-tuning run of a 24-layer model
def test_laser_on_a_large_layout_trains_the_top_layers_and_the_final_norm(large_base, assets_dir, tmp_path):
    arch, base_path = large_base
    config = REPO / "upstream_configs" / f"score_{arch}_large.yaml"
    export_path = finetune(config, base_path, assets_dir, tmp_path / "run", method="laser")
    base, tuned = (torch.load(p, weights_only=True) for p in (base_path, export_path))
    changed = {k for k, v in weights(base).items() if not torch.equal(v, weights(tuned)[k])}
    top = tuple(f"encoder.layers.{i}." for i in range(LAYERS - 4, LAYERS))
    assert all(k.startswith((*top, "encoder.layer_norm.")) for k in changed), sorted(changed)
    assert any(k.startswith("encoder.layer_norm.") for k in changed)
    assert any(k.startswith(top[0]) for k in changed)
