"""``score-s3prl export CKPT --format hf OUT_DIR``: a tuned model as a transformers directory.

CKPT is a SCORE/LASER export (or any base): s3prl's converted HuBERT dict, or the WavLM dict
stock ``wavlm_local`` reads. OUT_DIR receives a transformers ``HubertModel`` or ``WavLMModel``
directory: ``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` (a
``Wav2Vec2FeatureExtractor`` with the model's waveform normalisation), so the model loads with
``transformers.HubertModel.from_pretrained(OUT_DIR)`` (or ``WavLMModel``) and with s3prl's stock
``-u hf_hubert_custom -k OUT_DIR``. Its hidden states equal the s3prl upstream's to float32
rounding (tests: within 1e-4 absolute on real speech, the HuBERT directory reader's tolerance).

The weights are renamed from s3prl's (fairseq's) names to transformers' and loaded strictly into
a freshly built transformers model before it is saved, so a name or shape that does not fit
stops the export. Pre-training-only weights (``final_proj``, ``label_embs_concat``) are dropped:
transformers' base models have no place for them and feature extraction never uses them.
Needs ``transformers`` and ``safetensors`` (``pip install score-s3prl[hf]``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from .checkpoint import base_architecture, build_base, rename_weights
from .errors import ArgumentParser, ScoreError

# s3prl (fairseq) names -> transformers names, shared by HuBERT and WavLM. The CNN norm rule
# depends on the extractor mode: "default" (group norm in block 0) or "layer_norm" (every block).
_RULES = [
    (r"mask_emb", r"masked_spec_embed"),
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.", r"feature_extractor.conv_layers.\1.conv."),
    (r"layer_norm\.", r"feature_projection.layer_norm."),
    (r"post_extract_proj\.", r"feature_projection.projection."),
    (r"encoder\.pos_conv\.0\.bias", r"encoder.pos_conv_embed.conv.bias"),
    (r"encoder\.pos_conv\.0\.weight_g", r"encoder.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"encoder\.pos_conv\.0\.weight_v", r"encoder.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"encoder\.layer_norm\.", r"encoder.layer_norm."),
    (r"encoder\.layers\.(\d+)\.self_attn\.grep_a", r"encoder.layers.\1.attention.gru_rel_pos_const"),
    (r"encoder\.layers\.(\d+)\.self_attn\.grep_linear\.", r"encoder.layers.\1.attention.gru_rel_pos_linear."),
    (r"encoder\.layers\.(\d+)\.self_attn\.relative_attention_bias\.", r"encoder.layers.\1.attention.rel_attn_embed."),
    (r"encoder\.layers\.(\d+)\.self_attn\.", r"encoder.layers.\1.attention."),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"encoder.layers.\1.layer_norm."),
    (r"encoder\.layers\.(\d+)\.fc1\.", r"encoder.layers.\1.feed_forward.intermediate_dense."),
    (r"encoder\.layers\.(\d+)\.fc2\.", r"encoder.layers.\1.feed_forward.output_dense."),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.layers.\1.final_layer_norm."),
]
_CNN_NORM = {
    "default": (r"feature_extractor\.conv_layers\.0\.2\.", r"feature_extractor.conv_layers.0.layer_norm."),
    "layer_norm": (r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.", r"feature_extractor.conv_layers.\1.layer_norm."),
}
_PRETRAINING_ONLY = ("final_proj.", "label_embs_concat", "target_glu.")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A converted HuBERT or WavLM checkpoint, loaded with ``weights_only=True`` and checked."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ScoreError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ScoreError(f"{path}: not a loadable checkpoint ({exc})") from exc
    if not isinstance(state, dict):
        raise ScoreError(f"{path}: checkpoint is a {type(state).__name__}, expected a dict")
    build_base(state, path)  # raises a ScoreError naming the problem
    return state


def hf_config(state: dict[str, Any]):
    """The transformers ``HubertConfig`` / ``WavLMConfig`` of an s3prl checkpoint dict.

    The CNN's layout is read from the built s3prl model (not by evaluating the config string).
    """
    import transformers

    model, normalize = build_base(state, "checkpoint")
    arch = base_architecture(state)
    cfg = dict(state["cfg"]) if arch == "wavlm" else dict(state["model_cfg"])
    convs = [block[0] for block in model.feature_extractor.conv_layers]
    encoder = model.encoder
    if model.post_extract_proj is None:
        raise ScoreError("checkpoint: a model without a feature projection has no transformers counterpart")
    mode = cfg.get("extractor_mode", "default")
    common = dict(
        hidden_size=encoder.embedding_dim,
        num_hidden_layers=len(encoder.layers),
        num_attention_heads=cfg.get("encoder_attention_heads", 12),
        intermediate_size=encoder.layers[0].fc1.out_features,
        hidden_act=cfg.get("activation_fn", "gelu"),
        hidden_dropout=cfg.get("dropout", 0.1),
        attention_dropout=cfg.get("attention_dropout", 0.1),
        activation_dropout=cfg.get("activation_dropout", 0.0),
        feat_proj_dropout=cfg.get("dropout_input", 0.0),
        layerdrop=cfg.get("encoder_layerdrop", 0.0),
        do_stable_layer_norm=bool(encoder.layer_norm_first),
        feat_extract_norm={"default": "group", "layer_norm": "layer"}[mode],
        feat_extract_activation="gelu",
        conv_dim=[c.out_channels for c in convs],
        conv_kernel=[c.kernel_size[0] for c in convs],
        conv_stride=[c.stride[0] for c in convs],
        conv_bias=convs[0].bias is not None,
        num_conv_pos_embeddings=encoder.pos_conv[0].kernel_size[0],
        num_conv_pos_embedding_groups=encoder.pos_conv[0].groups,
        layer_norm_eps=1e-5,
    )
    if arch == "wavlm":
        if not cfg.get("relative_position_embedding", False) or not cfg.get("gru_rel_pos", False):
            raise ScoreError("checkpoint: transformers' WavLM needs the gated relative position bias")
        config = transformers.WavLMConfig(**common, num_buckets=cfg["num_buckets"], max_bucket_distance=cfg["max_distance"])
    else:
        config = transformers.HubertConfig(**common, feat_proj_layer_norm=True)
    return config, normalize, mode


def hf_weights(state: dict[str, Any], mode: str) -> dict[str, torch.Tensor]:
    """The checkpoint's weights under transformers' names (pre-training-only ones dropped)."""
    weights = state["model"] if base_architecture(state) == "wavlm" else state["model_weight"]
    kept = {name: tensor for name, tensor in weights.items() if not name.startswith(_PRETRAINING_ONLY)}
    return rename_weights(kept, [_CNN_NORM[mode], *_RULES],
                          lambda name: f"checkpoint: weight {name} has no transformers counterpart")


def export_hf(ckpt: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write CKPT as a transformers directory in OUT_DIR; returns OUT_DIR."""
    import transformers

    state = read_checkpoint(ckpt)
    config, normalize, mode = hf_config(state)
    cls = transformers.WavLMModel if base_architecture(state) == "wavlm" else transformers.HubertModel
    model = cls(config)
    weights = hf_weights(state, mode)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ScoreError(f"{ckpt}: does not map onto transformers' {cls.__name__}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}")
    model.load_state_dict(weights, strict=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    # The feature extractor is what transformers pipelines and s3prl's hf_hubert_custom apply
    # before the model: normalisation as the s3prl task config says; attention masks only for
    # layer-norm CNNs (transformers' advice for group-norm models such as HuBERT Base).
    extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=normalize,
        return_attention_mask=mode == "layer_norm",
    )
    extractor.save_pretrained(out)
    score = state.get("score")
    if score is not None:  # keep the provenance next to the weights
        (out / "score_s3prl.json").write_text(json.dumps(score, indent=2, default=str) + "\n", encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="score-s3prl export", description=__doc__.split("\n")[0])
    parser.add_argument("ckpt", help="a SCORE/LASER export (converted HuBERT or WavLM .pt)")
    parser.add_argument("out_dir", help="directory to write")
    parser.add_argument("--format", choices=["hf"], default="hf", help="hf: a transformers model directory")
    args = parser.parse_args(argv)
    print(export_hf(args.ckpt, args.out_dir))
    return 0


def hf_to_s3prl_rules(mode: str) -> list[tuple[str, str]]:
    """The renaming rules read backwards (transformers -> s3prl names), for reading directories.

    Each forward rule has at most one ``(\\d+)`` group, used once as ``\\1`` in its replacement.
    """
    inverse = []
    for pattern, replacement in [_CNN_NORM[mode], *_RULES]:
        source = re.escape(replacement).replace(re.escape("\\1"), r"(\d+)")
        target = pattern.replace(r"(\d+)", "\\1").replace(r"\.", ".")
        inverse.append((source, target))
    return inverse
