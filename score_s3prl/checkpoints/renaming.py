"""Weight names between s3prl (fairseq's names) and transformers, for HuBERT and WavLM alike.

One table per direction pair: :data:`S3PRL_TO_HF` is written out; the transformers -> s3prl
rules are derived from it (:func:`hf_to_s3prl_rules`), so the two directions cannot drift apart.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import torch

from ..errors import ScoreError

# s3prl (fairseq) names -> transformers names, shared by HuBERT and WavLM. The CNN norm rule
# depends on the extractor mode: "default" (group norm in block 0) or "layer_norm" (every block).
S3PRL_TO_HF = [
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
S3PRL_TO_HF_CNN_NORM = {
    "default": (r"feature_extractor\.conv_layers\.0\.2\.", r"feature_extractor.conv_layers.0.layer_norm."),
    "layer_norm": (r"feature_extractor\.conv_layers\.(\d+)\.2\.1\.", r"feature_extractor.conv_layers.\1.layer_norm."),
}


def s3prl_to_hf_rules(mode: str) -> list[tuple[str, str]]:
    """The s3prl -> transformers rules for a CNN of extractor ``mode`` (``default``/``layer_norm``)."""
    return [S3PRL_TO_HF_CNN_NORM[mode], *S3PRL_TO_HF]


def hf_to_s3prl_rules(mode: str) -> list[tuple[str, str]]:
    """The renaming rules read backwards (transformers -> s3prl names), for reading directories.

    Each forward rule has at most one ``(\\d+)`` group, used once as ``\\1`` in its replacement.
    """
    inverse = []
    for pattern, replacement in s3prl_to_hf_rules(mode):
        source = re.escape(replacement).replace(re.escape("\\1"), r"(\d+)")
        target = pattern.replace(r"(\d+)", "\\1").replace(r"\.", ".")
        inverse.append((source, target))
    return inverse


def rename_weights(weights: dict[str, torch.Tensor], rules: Sequence[tuple[str, str]],
                   unmatched: Callable[[str], str]) -> dict[str, torch.Tensor]:
    """Each weight renamed by the first rule whose regex ``pattern`` matches the start of its name.

    Args:
        rules: (pattern, replacement) pairs for ``re.subn`` (``\\1`` refers to a group).
        unmatched: the error message for a name no rule matches.
    Raises:
        ScoreError: ``unmatched(name)`` for the first weight no rule renames.
    """
    renamed = {}
    for name, tensor in weights.items():
        for pattern, replacement in rules:
            new_name, hits = re.subn(f"^{pattern}", replacement, name)
            if hits:
                renamed[new_name] = tensor
                break
        else:
            raise ScoreError(unmatched(name))
    return renamed
