"""LASER's temporal regulariser and loss against a direct transcription of the formula."""

from __future__ import annotations

import math

import pytest
import torch

from score_s3prl.laser import laser_loss, pairwise_distances, temporal_regulariser


def regulariser_loops(f: torch.Tensor, sigma: int, margin: float) -> float:
    """R(f) = 1/n^2 sum_ij [y_ij w_ij max(0, m - d_ij) + (1 - y_ij) d_ij / w_ij], one pair at a time."""
    n = f.shape[0]
    total = 0.0
    for i in range(n):
        for j in range(n):
            d = math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(f[i], f[j])))
            w = (i - j) ** 2 + 1
            y = 1 if abs(i - j) > sigma else 0
            total += y * w * max(0.0, margin - d) + (1 - y) * d / w
    return total / n**2


def padded_batch(lengths: list[int], dim: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), dim, generator=g, dtype=dtype)
    x = torch.nn.functional.normalize(x, dim=-1) * 0.6  # distances around the margins used below
    for b, n in enumerate(lengths):
        x[b, n:] = 7.0  # padding that would change every sum if it leaked in
    return x


@pytest.mark.parametrize("sigma,margin", [(0, 1.1), (1, 0.9), (2, 2.0), (20, 2.0)])
def test_regulariser_equals_the_formula_on_a_padded_batch(sigma, margin):
    lengths = [7, 3, 5, 1]
    x = padded_batch(lengths, dim=4, seed=sigma)
    got = temporal_regulariser(x, torch.tensor(lengths), sigma, margin)
    expected = torch.tensor([regulariser_loops(x[b, :n], sigma, margin) for b, n in enumerate(lengths)],
                            dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # each row alone, unpadded, gives the same value
    for b, n in enumerate(lengths):
        torch.testing.assert_close(temporal_regulariser(x[b : b + 1, :n], None, sigma, margin)[0], got[b])


def test_regulariser_matches_the_official_cdist_form_in_float32():
    # The official laser.py: cdist over all n x n pairs, relu hinge, divided by n^2.
    x = padded_batch([40], dim=16, seed=3, dtype=torch.float32)
    d = torch.cdist(x, x)[0]
    n = d.shape[0]
    idx = torch.arange(n)[:, None]
    gap2 = ((idx - idx.T) ** 2 + 1).float()
    y = ((idx - idx.T).abs() > 0).float()
    official = (y * gap2 * torch.relu(1.1 - d) + (1 - y) * d / gap2).sum() / n**2
    torch.testing.assert_close(temporal_regulariser(x, None, 0, 1.1)[0], official, rtol=1e-5, atol=1e-6)


def test_distances_are_exact_zero_with_zero_gradient_on_the_diagonal_and_for_equal_frames():
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    x[0, 3] = x[0, 1]  # two identical frames
    x.requires_grad_(True)
    d = pairwise_distances(x)
    assert torch.all(torch.diagonal(d, dim1=1, dim2=2) == 0)
    assert d[0, 1, 3] == 0 and d[0, 3, 1] == 0
    (d * torch.rand_like(d)).sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(d.detach(), torch.cdist(x.detach(), x.detach()), rtol=1e-9, atol=1e-9)


def test_regulariser_gradcheck_float64():
    lengths = torch.tensor([6, 4])
    x = padded_batch([6, 4], dim=3, seed=1).requires_grad_(True)
    # sigma 1 and margin 2: both branches (pull and hinge) are active and differentiable here.
    assert torch.autograd.gradcheck(lambda t: temporal_regulariser(t, lengths, 1, 2.0), (x,))
    x.grad = None
    temporal_regulariser(x, lengths, 1, 2.0).sum().backward()
    assert torch.all(x.grad[1, 4:] == 0)  # padding gets no gradient


def test_laser_loss_is_divergence_plus_alpha_times_both_regularisers():
    from score_s3prl.softdtw import soft_dtw_divergence

    x = padded_batch([6, 4], dim=5, seed=4)
    y = padded_batch([5, 7], dim=5, seed=5)
    xl, yl = torch.tensor([6, 4]), torch.tensor([5, 7])
    got = laser_loss(x, xl, y, yl, gamma=0.1, alpha=0.4, sigma=0, margin=1.1)
    divergence = soft_dtw_divergence(x, y, xl, yl, gamma=0.1, cost="sqeuclidean")
    regs = [regulariser_loops(t[b, :n], 0, 1.1) + regulariser_loops(u[b, :m], 0, 1.1)
            for t, u, ls, ms in [(x, y, xl, yl)] for b, (n, m) in enumerate(zip(ls.tolist(), ms.tolist()))]
    torch.testing.assert_close(got, divergence + 0.4 * torch.tensor(regs, dtype=torch.float64))
    assert got.shape == (2,)


def official_laser_trainable(names: list[str], upstream: str) -> set[str]:
    """runner_part_freeze.py's rule on s3prl upstream parameter names (1-based position `count`):
    hubert_base freezes 2 < count < 177, wavlm_base 1 < count < 207, both also freeze any name
    containing `model.layer_norm` or `model.final_proj`; everything else trains."""
    low, high = {"hubert_base": (2, 177), "wavlm_base": (1, 207)}[upstream]
    trainable = set()
    for count, name in enumerate(names, start=1):
        if low < count < high or "model.layer_norm" in name or "model.final_proj" in name:
            continue
        trainable.add(name)
    return trainable


# Parameters that the official rule leaves trainable but that never receive a gradient.
UNUSED = {"mask_emb", "label_embs_concat"}


@pytest.mark.slow  # builds the real-size HuBERT Base
def test_laser_freezing_maps_the_official_index_rule_on_real_hubert_base(tmp_path):
    """On HuBERT Base's real parameter order (random weights, built as s3prl's hubert_local
    builds it) the official index rule trains exactly what ScoreModel(method="laser") trains."""
    from score_s3prl import compat
    from score_s3prl.checkpoints.hubert import random_hubert_state, write_converted
    from score_s3prl.model import ScoreModel

    compat.apply()
    from s3prl.upstream.hubert.expert import UpstreamExpert

    state = random_hubert_state()  # HuBERT Base: 12 x 768
    write_converted(tmp_path / "base.pt", **state)
    names = [name for name, _ in UpstreamExpert(str(tmp_path / "base.pt")).named_parameters()]
    assert len(names) == 214
    official = {name.removeprefix("model.") for name in official_laser_trainable(names, "hubert_base")}
    model = ScoreModel(state, method="laser", trainable_layers=2, train_final_norm=True)
    ours = {name for name, p in model.student.named_parameters() if p.requires_grad}
    assert official - UNUSED == ours
    assert "encoder.layer_norm.weight" in ours and "layer_norm.weight" not in ours
    assert {name.split(".")[2] for name in ours if name.startswith("encoder.layers.")} == {"10", "11"}


@pytest.mark.slow  # builds the real-size WavLM Base
def test_official_wavlm_rule_trains_the_top_two_layers_and_encoder_norm():
    """The same mapping on WavLM Base's real parameter order (248 parameters: layer 1 holds the
    relative position bias, every layer a gated-relative-position pair); its bias stays frozen."""
    from score_s3prl import compat

    compat.apply()
    from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

    base = dict(extractor_mode="default", encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
                encoder_attention_heads=12, layer_norm_first=False, conv_bias=False, conv_pos=128,
                conv_pos_groups=16, relative_position_embedding=True, num_buckets=320, max_distance=800,
                gru_rel_pos=True)  # WavLM Base's published configuration
    names = ["model." + name for name, _ in WavLM(WavLMConfig(base)).named_parameters()]
    assert len(names) == 248
    trainable = {name.removeprefix("model.") for name in official_laser_trainable(names, "wavlm_base")}
    layers = {name.split(".")[2] for name in trainable if name.startswith("encoder.layers.")}
    assert layers == {"10", "11"}
    assert trainable - {n for n in trainable if n.startswith(("encoder.layers.10.", "encoder.layers.11."))} == {
        "mask_emb", "encoder.layer_norm.weight", "encoder.layer_norm.bias"}
    assert "encoder.layers.0.self_attn.relative_attention_bias.weight" not in trainable
