"""LASER's view batching (``laser.view_batching``) against a transcription of the official code.

The official LASER code hands s3prl's runner both views of an utterance as one list of two
waveforms (``LASER_finetuning/dataset.py``: ``collate_fn``), so stock s3prl's HuBERT / WavLM
``UpstreamExpert`` runs them as one zero-padded batch of 2 and the runner's ``Featurizer``
(``-l -1``) cuts each row to ``round(samples / 320)`` frames; ``expert.py`` then applies the
shared Linear, per-frame L2 normalisation, ``SoftDTW(normalize=True)`` and ``alpha`` times the
IDM regulariser of each view. The transcription below runs exactly those stock s3prl modules.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from score_s3prl.checkpoints.common import TINY_CONV_LAYERS
from score_s3prl.checkpoints.hubert import random_hubert_state, write_converted
from score_s3prl.checkpoints.wavlm import tiny_wavlm_state, write_wavlm
from score_s3prl.config import config_hash, load_config
from score_s3prl.errors import ScoreError
from score_s3prl.model import ScoreModel, conv_frame_lengths, last_layer_features, paired_view_features

NO_DROPOUT = {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "dropout_input": 0.0}
TINY = {"encoder_layers": 4, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2,
        "final_dim": 16, "conv_feature_layers": TINY_CONV_LAYERS, "conv_pos": 16, "conv_pos_groups": 4}
# (start, samples) of the two views of each pair, cut from the bundled utterance (73 000 samples)
PAIRS = [((0, 25600), (9000, 28770)),  # the shorter view: 79 frames alone, 80 kept in the batch
         ((4000, 31000), (2000, 24100)),  # the longer view first
         ((1000, 20000), (30000, 20000))]  # equal lengths: both views as alone


def state_for(variant: str) -> dict:
    """Tiny models without dropout (deterministic in train mode, so the update is comparable)."""
    if variant == "wavlm":
        state = tiny_wavlm_state(seed=3)
        state["cfg"] = {**state["cfg"], **NO_DROPOUT}
        return state
    layout = {"layer_norm_first": True, "extractor_mode": "layer_norm"} if variant == "pre_ln" else {}
    state = random_hubert_state({**TINY, **NO_DROPOUT, **layout}, seed=3)
    state["task_cfg"] = {**state["task_cfg"], "normalize": variant == "pre_ln"}
    return state


def stock_upstream(state: dict, path):
    """Stock s3prl's UpstreamExpert for the checkpoint, and the runner's Featurizer at ``-l -1``."""
    from score_s3prl import compat

    compat.apply()
    from s3prl.upstream.interfaces import Featurizer

    if "cfg" in state:
        from s3prl.upstream.wavlm.expert import UpstreamExpert

        write_wavlm(path, **state)
    else:
        from s3prl.upstream.hubert.expert import UpstreamExpert

        write_converted(path, **state)
    upstream = UpstreamExpert(str(path))
    featurizer = Featurizer(upstream, "hidden_states", upstream_device="cpu", layer_selection=-1)
    upstream.train()  # the official runner trains the whole upstream in train mode
    return upstream, featurizer


def views(speech: torch.Tensor, pairs=PAIRS) -> tuple[list, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs as lists of 1-d views and as two zero-padded batches with lengths."""
    listed = [[speech[s : s + n] for s, n in pair] for pair in pairs]
    batches = []
    for side in (0, 1):
        wavs = [pair[side] for pair in listed]
        batches += [torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True), torch.tensor([len(w) for w in wavs])]
    return listed, *batches


def official_loss(frames: list[torch.Tensor], head: torch.nn.Module, alpha: float, sigma: int, margin: float,
                  gamma: float) -> torch.Tensor:
    """expert.py's forward on the Featurizer's two rows: connector, L2 norm, soft-DTW divergence
    (SoftDTW(normalize=True): sdtw(x, y) - (sdtw(x, x) + sdtw(y, y)) / 2) + alpha * IDM of each."""
    from score_s3prl.softdtw import soft_dtw_divergence

    def idm(f: torch.Tensor) -> torch.Tensor:  # laser.py's IDMContrastiveLoss, as written there
        d = torch.cdist(f, f, p=2).squeeze(0)
        n = d.size(0)
        idx = torch.arange(n).view(n, 1)
        y = torch.where(torch.abs(idx - idx.T) <= sigma, torch.tensor(0), torch.tensor(1))
        i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        w_bar = (i - j) ** 2 + 1
        return torch.sum(y * w_bar * F.relu(margin - d) + (1 - y) * (1 / w_bar) * d) / (n * n)

    f1, f2 = (F.normalize(head(f.unsqueeze(0)), p=2, dim=2) for f in frames)
    return soft_dtw_divergence(f1, f2, gamma=gamma, cost="sqeuclidean")[0] + alpha * (idm(f1) + idm(f2))


@pytest.mark.parametrize("variant", ["post_ln", "pre_ln", "wavlm"])
def test_official_batching_is_the_stock_upstream_batch_of_two(variant, speech, tmp_path):
    state = state_for(variant)
    upstream, featurizer = stock_upstream(state, tmp_path / "base.pt")
    model = upstream.model
    listed, wav_a, len_a, wav_b, len_b = views(speech)
    normalize = variant == "pre_ln"
    with torch.no_grad():
        frames_a, kept_a, frames_b, kept_b = paired_view_features(model, wav_a, len_a, wav_b, len_b, normalize)
        alone_a, count_a = last_layer_features(model, wav_a, len_a, normalize)
        alone_b, count_b = last_layer_features(model, wav_b, len_b, normalize)
        for i, pair in enumerate(listed):
            official = featurizer(pair, upstream(pair))  # the runner: upstream, then the Featurizer
            assert [len(f) for f in official] == [int(kept_a[i]), int(kept_b[i])]
            torch.testing.assert_close(frames_a[i, : kept_a[i]], official[0], rtol=0, atol=2e-5)
            torch.testing.assert_close(frames_b[i, : kept_b[i]], official[1], rtol=0, atol=2e-5)
    # The longer view is as alone; the shorter one is not (the test can tell them apart).
    assert kept_b[0] == count_b[0] and kept_a[0] == count_a[0] + 1 == 80  # 25600 samples: 79 alone, 80 kept
    torch.testing.assert_close(frames_b[0, : kept_b[0]], alone_b[0, : count_b[0]], rtol=0, atol=2e-5)
    shared = int(count_a[0])
    gap = (frames_a[0, :shared] - alone_a[0, :shared]).abs().max()
    if variant == "pre_ln":  # a layer-norm CNN is per frame: only frames near the view's end differ
        assert gap > 1e-4
    else:  # GroupNorm over time in the first CNN block: every frame of the shorter view changes
        assert (frames_a[0, :10] - alone_a[0, :10]).abs().max() > 1e-3
    # equal lengths: nothing padded, the same frames as alone
    torch.testing.assert_close(frames_a[2, : kept_a[2]], alone_a[2, : count_a[2]], rtol=0, atol=2e-5)
    assert kept_a[2] == count_a[2]


def test_the_kept_frame_count_is_the_featurizers_rounding(tmp_path):
    """round(samples / 320) with Python's round (half to even), at most the pair's frame count."""
    state = state_for("post_ln")
    model = ScoreModel(state, method="laser", trainable_layers=0, train_final_norm=False).student
    lengths = [400, 560, 880, 25600, 25760, 26080]  # 1.25, 1.75, 2.75, 80, 80.5, 81.5 frames
    wavs = torch.randn(len(lengths), 30000)
    longest = torch.randn(len(lengths), 30000)
    with torch.no_grad():
        _, kept, _, _ = paired_view_features(model, wavs, torch.tensor(lengths), longest,
                                             torch.full((len(lengths),), 30000))
    assert kept.tolist() == [1, 2, 3, 80, 80, 82]
    assert conv_frame_lengths(model, torch.tensor(lengths)).tolist() == [1, 1, 2, 79, 80, 81]


@pytest.mark.parametrize("variant", ["post_ln", "pre_ln", "wavlm"])
def test_one_laser_update_matches_the_official_batching(variant, speech, tmp_path):
    """Two pairs, one s3prl-AdamW update: ours (one forward over both pairs, the mean loss) and
    the official runner (one pair per forward, loss / 2 accumulated, clipping at 1)."""
    from s3prl.optimizers import AdamW

    state = state_for(variant)
    upstream, featurizer = stock_upstream(state, tmp_path / "base.pt")
    settings = dict(alpha=0.4, sigma=0, margin=1.1, gamma=0.1)
    torch.manual_seed(0)
    ours = ScoreModel(copy.deepcopy(state), method="laser", view_batching="official", **settings)
    separate = ScoreModel(copy.deepcopy(state), method="laser", view_batching="separate", **settings)
    separate.head.load_state_dict(ours.head.state_dict())
    head = copy.deepcopy(ours.head)
    trainable = {name for name, p in ours.student.named_parameters() if p.requires_grad}
    for name, p in upstream.model.named_parameters():
        p.requires_grad_(name in trainable)  # the freezing rule is checked in test_laser.py
    listed, wav_a, len_a, wav_b, len_b = views(speech, PAIRS[:2])

    official_params = [p for p in upstream.model.parameters() if p.requires_grad] + list(head.parameters())
    for pair in listed:
        loss = official_loss(featurizer(pair, upstream(pair)), head, **settings)
        (loss / len(listed)).backward()
    loss_ours, stats = ours(wav_a, len_a, wav_b, len_b)
    loss_ours.backward()
    loss_separate, _ = separate(wav_a, len_a, wav_b, len_b)
    loss_separate.backward()

    def named_grads(student, model_head):
        grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.requires_grad}
        grads.update({f"head.{n}": p.grad.clone() for n, p in model_head.named_parameters()})
        return grads

    expected, got, apart = (named_grads(upstream.model, head), named_grads(ours.student, ours.head),
                            named_grads(separate.student, separate.head))
    assert expected.keys() == got.keys() and len(got) > 4
    scale = max(float(g.abs().max()) for g in expected.values())  # some are 0 in exact arithmetic
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6 * scale, msg=name)
    assert max((apart[n] - expected[n]).abs().max() for n in expected) > 1e-3 * scale  # separate: another run

    deltas = []
    for params in (official_params, [p for p in ours.parameters() if p.requires_grad]):
        before = [p.detach().clone() for p in params]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        AdamW(params, lr=1e-3).step()
        deltas.append([p.detach() - b for p, b in zip(params, before)])
    assert len(deltas[0]) == len(deltas[1])
    for official_delta, our_delta in zip(*deltas):
        torch.testing.assert_close(our_delta, official_delta, rtol=0, atol=1e-5)
    assert max(float(d.abs().max()) for d in deltas[1]) > 5e-4  # the update moved the weights


def test_separate_batching_runs_each_view_alone(speech):
    """`separate` is the earlier behaviour: each view's frames as last_layer_features gives them."""
    from score_s3prl.laser import laser_loss

    state = state_for("post_ln")
    model = ScoreModel(state, method="laser", view_batching="separate").eval()
    _, wav_a, len_a, wav_b, len_b = views(speech)
    with torch.no_grad():
        loss, stats = model(wav_a, len_a, wav_b, len_b)
        xa, la = last_layer_features(model.student, wav_a, len_a)
        xb, lb = last_layer_features(model.student, wav_b, len_b)
        expected = laser_loss(model.project(xa), la, model.project(xb), lb, 0.1, 0.4, 0, 1.1)
    torch.testing.assert_close(stats["losses"], expected)
    assert stats["student_frames"].tolist() == la.tolist()
    assert stats["student_frames"][0] == 79  # alone: the convolution count, no extra frame


def test_view_batching_config_key():
    assert load_config(None).laser.view_batching == "official"
    cfg = load_config(None, ["laser.view_batching=separate", "method=laser"])
    assert cfg.laser.view_batching == "separate"
    with pytest.raises(ScoreError, match=r"laser.view_batching = 'pairs': expected 'official' or 'separate'"):
        load_config(None, ["laser.view_batching=pairs"])
    with pytest.raises(ScoreError, match="laser.view_batching: 'pairs' is not one of official, separate"):
        ScoreModel(state_for("post_ln"), method="laser", view_batching="pairs")
    # the key shapes LASER runs only: SCORE runs keep their hash
    score = [load_config(None, [f"laser.view_batching={v}"]) for v in ("official", "separate")]
    laser = [load_config(None, ["method=laser", f"laser.view_batching={v}"]) for v in ("official", "separate")]
    assert config_hash(score[0]) == config_hash(score[1])
    assert config_hash(laser[0]) != config_hash(laser[1])


def test_laser_configs_batch_the_views_as_the_official_code():
    from pathlib import Path

    configs = Path(__file__).resolve().parents[1] / "upstream_configs"
    for path in sorted(configs.glob("laser_*.yaml")):
        assert load_config(path).laser.view_batching == "official", path.name
        assert "view_batching: official" in path.read_text(), path.name  # stated, not left to the default
