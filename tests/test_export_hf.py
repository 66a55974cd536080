"""`score-s3prl export CKPT --format hf OUT_DIR`: transformers directories with the s3prl
upstream's hidden states on real speech."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import transformers  # noqa: E402

from score_s3prl import hub  # noqa: E402
from score_s3prl.cli import main as cli  # noqa: E402
from score_s3prl.errors import ScoreError  # noqa: E402

TINY_CONFIG = Path(__file__).resolve().parents[1] / "upstream_configs" / "score_tiny.yaml"
# float32 rounding of two implementations of the same graph (measured: 0 for HuBERT, ~1e-6 for WavLM)
ATOL = 1e-4


def s3prl_hidden_states(entry: str, ckpt, wav: torch.Tensor) -> list[torch.Tensor]:
    hub.register()
    import s3prl.hub

    upstream = getattr(s3prl.hub, entry)(ckpt=str(ckpt)).eval()
    with torch.no_grad():
        return upstream([wav])["hidden_states"]


@pytest.mark.slow  # transformers and s3prl models on real speech
@pytest.mark.parametrize("arch", ["hubert", "wavlm"])
def test_hf_export_has_the_s3prl_upstreams_hidden_states(arch, tiny_ckpt, tiny_wavlm_ckpt, assets_dir, tmp_path,
                                                         speech):
    from score_s3prl.config import load_config
    from score_s3prl.train import train

    base = tiny_ckpt if arch == "hubert" else tiny_wavlm_ckpt
    tuned = train(load_config(TINY_CONFIG, values_set={
        "init": str(base), "data.root": str(assets_dir), "out": str(tmp_path / "run"),
        "optim.total_updates": 2, "optim.warmup_updates": 1, "optim.utterances_per_update": 2}))
    out = tmp_path / "hf"
    assert cli(["export", str(tuned), "--format", "hf", str(out)]) == 0
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    cls = transformers.HubertModel if arch == "hubert" else transformers.WavLMModel
    model = cls.from_pretrained(out).eval()
    with torch.no_grad():
        theirs = model(speech[None], output_hidden_states=True).hidden_states
    ours = s3prl_hidden_states(f"{arch}_local", tuned, speech)
    assert len(theirs) == len(ours)
    for a, b in zip(theirs, ours):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    before = s3prl_hidden_states(f"{arch}_local", base, speech)
    assert (before[-1] - ours[-1]).abs().max() > 100 * ATOL  # the tuned weights, not the base's

    if arch == "hubert":  # s3prl's stock entry for transformers HuBERT directories reads it too
        import s3prl.hub

        custom = s3prl.hub.hf_hubert_custom(ckpt=str(out)).eval()
        with torch.no_grad():
            states = custom([speech])["hidden_states"]
        for a, b in zip(states, ours):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=0)

    # our base-model reader takes the directory back: the same weights, in the same s3prl format
    from score_s3prl.checkpoints import load_base_state
    from score_s3prl.checkpoints import base_architecture

    back, _ = load_base_state(str(out))
    assert base_architecture(back) == arch
    key = "model" if arch == "wavlm" else "model_weight"
    tuned_weights = torch.load(tuned, weights_only=True)[key]
    compared = 0
    for name, value in back[key].items():
        if not name.startswith(("final_proj.", "label_embs_concat")):  # pre-training only: not exported
            assert torch.equal(value, tuned_weights[name]), name
            compared += 1
    assert compared >= len(tuned_weights) - 3


def test_export_of_a_non_checkpoint_is_a_clear_error(tmp_path):
    from score_s3prl.checkpoints.transformers_dirs import export_hf

    (tmp_path / "x.pt").write_text("nothing")
    with pytest.raises(ScoreError, match="x.pt: not a PyTorch checkpoint"):
        export_hf(tmp_path / "x.pt", tmp_path / "out")


class _RunsCommand:
    """Unpickles as a call of os.system: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_export_of_a_checkpoint_naming_code_is_refused_in_one_line(tmp_path):
    from score_s3prl.checkpoints.transformers_dirs import export_hf

    marker = tmp_path / "ran"
    torch.save({"model_weight": _RunsCommand(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ScoreError) as error:
        export_hf(tmp_path / "evil.pt", tmp_path / "out")
    message = str(error.value)
    # read through checkpoints.safeload: torch's advice to re-run with weights_only=False is gone
    assert "evil.pt: not a loadable checkpoint: it names" in message and "system" in message
    assert "\n" not in message and "weights_only" not in message
    assert not marker.exists() and not (tmp_path / "out").exists()
