"""The four recipes (SCORE, LASER) x (HuBERT, WavLM) on tiny random models: a few updates each,
exports that stock s3prl loads with our hidden states, and only the intended parameters changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from score_s3prl.checkpoints import build_base
from score_s3prl.config import load_config
from score_s3prl.model import last_layer_features
from score_s3prl.train import train

REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "upstream_configs" / "score_tiny.yaml"

# What may change (tiny models: 4 layers, the top 2 train). SCORE trains both model-level
# norms, LASER's official runner only encoder.layer_norm; WavLM's relative position bias sits
# in layer 1 (encoder.layers.0) and stays frozen.
ALLOWED = {
    "score": ("encoder.layers.2.", "encoder.layers.3.", "encoder.layer_norm.", "layer_norm."),
    "laser": ("encoder.layers.2.", "encoder.layers.3.", "encoder.layer_norm."),
}


def weights(state: dict) -> dict:
    return state["model"] if "model" in state and "cfg" in state else state["model_weight"]


@pytest.mark.parametrize("arch", ["hubert", "wavlm"])
@pytest.mark.parametrize("method", ["score", "laser"])
def test_recipe_exports_load_in_stock_s3prl(arch, method, tiny_ckpt, tiny_wavlm_ckpt, assets_dir, tmp_path, speech):
    from score_s3prl import hub

    hub.register()
    import s3prl.hub

    base_path = tiny_ckpt if arch == "hubert" else tiny_wavlm_ckpt
    cfg = load_config(TINY_CONFIG, values_set={
        "init": str(base_path), "data.root": str(assets_dir), "out": str(tmp_path / "run"), "method": method,
        "optim.total_updates": 3, "optim.warmup_updates": 1, "optim.utterances_per_update": 2,
        # the official heads: SCORE WavLM an MLP, the others one Linear
        "model.head": "mlp" if (method, arch) == ("score", "wavlm") else "linear"})
    export_path = train(cfg)
    assert export_path.name == f"score_{arch}.pt"
    base = torch.load(base_path, weights_only=True)
    tuned = torch.load(export_path, weights_only=True)
    assert tuned["score"]["method"] == method.upper() and tuned["score"]["architecture"] == arch
    changed = {k for k, v in weights(base).items() if not torch.equal(v, weights(tuned)[k])}
    assert changed and all(k.startswith(ALLOWED[method]) for k in changed), sorted(changed)
    assert any(k.startswith("encoder.layers.3.") for k in changed)
    assert "encoder.layers.0.self_attn.relative_attention_bias.weight" not in changed

    stock_entry = getattr(s3prl.hub, f"{arch}_local")
    ours_entry = getattr(s3prl.hub, f"score_{arch}_local")
    stock, ours, before = stock_entry(ckpt=str(export_path)), ours_entry(ckpt=str(export_path)), stock_entry(ckpt=str(base_path))
    with torch.no_grad():
        theirs, mine, old = (u.eval()([speech])["hidden_states"] for u in (stock, ours, before))
        model, normalize = build_base(tuned, "export")
        frames, _ = last_layer_features(model, speech[None], torch.tensor([speech.numel()]), normalize)
    assert all(torch.equal(a, b) for a, b in zip(mine, theirs))  # our entry is stock s3prl's
    # our training-time features of the exported weights are the stock upstream's last hidden state
    torch.testing.assert_close(frames, theirs[-1], rtol=0, atol=1e-5)
    assert not torch.equal(theirs[-1], old[-1])  # the export carries the tuned weights


def test_run_superb_accepts_wavlm_upstreams(tiny_wavlm_ckpt):
    """`run_superb.sh --upstream wavlm_base --upstream score_wavlm_local=CKPT` passes the start-up
    checks and hands s3prl `-u NAME -k CKPT`."""
    from score_s3prl.superb.checks import check_upstreams
    from score_s3prl.superb.settings import parse_upstream

    upstreams = [parse_upstream("wavlm_base"), parse_upstream(f"score_wavlm_local={tiny_wavlm_ckpt}")]
    check_upstreams(upstreams)
    assert upstreams[1].flags == ["-u", "score_wavlm_local", "-k", str(tiny_wavlm_ckpt)]
    assert upstreams[0].flags == ["-u", "wavlm_base"]


def test_wavlm_entry_refuses_a_hubert_checkpoint(tiny_ckpt):
    from score_s3prl.errors import ScoreError
    from score_s3prl.hub import score_wavlm_local

    with pytest.raises(ScoreError, match="not an s3prl WavLM checkpoint"):
        score_wavlm_local(ckpt=str(tiny_ckpt))


def test_make_tiny_writes_a_wavlm_that_stock_wavlm_local_loads(tmp_path, speech):
    from score_s3prl import hub
    from score_s3prl.cli import main as cli

    assert cli(["make-tiny", str(tmp_path / "w.pt"), "--arch", "wavlm", "--layers", "3"]) == 0
    hub.register()
    import s3prl.hub

    with torch.no_grad():
        states = s3prl.hub.wavlm_local(ckpt=str(tmp_path / "w.pt")).eval()([speech[:16000]])["hidden_states"]
    assert len(states) == 4 and states[-1].shape == (1, 49, 32)
