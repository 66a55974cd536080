"""The SCORE student/teacher model: exact padded features, freezing, loss, export, summary."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from score_s3prl.checkpoints.hubert import build_hubert, tiny_hubert_state
from score_s3prl.errors import ScoreError
from score_s3prl.model import (
    FINAL_NORMS,
    ScoreModel,
    conv_frame_lengths,
    last_layer_features,
    student_state_for_export,
    trainable_summary,
)


def _soft_dtw_bruteforce(x: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """Soft-DTW of two (N, D), (M, D) sequences by the textbook recursion, in float64."""
    x, y = x.double(), y.double()
    cost = torch.cdist(x, y) ** 2
    n, m = cost.shape
    r = torch.full((n + 1, m + 1), float("inf"), dtype=torch.float64)
    r[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            prev = torch.stack([r[i - 1, j - 1], r[i - 1, j], r[i, j - 1]])
            r[i, j] = cost[i - 1, j - 1] - gamma * torch.logsumexp(-prev / gamma, dim=0)
    return r[n, m]


def _divergence_bruteforce(x, y, x_lengths=None, y_lengths=None, gamma=0.1, cost="sqeuclidean", bandwidth=None):
    assert cost == "sqeuclidean" and bandwidth is None
    out = []
    for b in range(x.shape[0]):
        xb, yb = x[b, : x_lengths[b]], y[b, : y_lengths[b]]
        sxy, sxx, syy = (_soft_dtw_bruteforce(p, q, gamma) for p, q in ((xb, yb), (xb, xb), (yb, yb)))
        out.append(sxy - (sxx + syy) / 2)
    return torch.stack(out).to(x.dtype)


@pytest.fixture
def soft_dtw(monkeypatch):
    """The project's soft-DTW divergence; a brute-force stand-in until the engine lands."""
    try:
        from score_s3prl.softdtw import soft_dtw_divergence
    except ImportError:
        module = types.ModuleType("score_s3prl.softdtw")
        module.soft_dtw_divergence = _divergence_bruteforce
        monkeypatch.setitem(sys.modules, "score_s3prl.softdtw", module)
        soft_dtw_divergence = _divergence_bruteforce
    return soft_dtw_divergence


def _pre_ln_state(seed: int = 1) -> dict:
    """A tiny HuBERT-Large-like model: pre-LN, layer-norm CNN, normalised input."""
    from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig

    state = tiny_hubert_state(seed)
    state["model_cfg"] = {**state["model_cfg"], "layer_norm_first": True, "extractor_mode": "layer_norm"}
    state["task_cfg"] = {**state["task_cfg"], "normalize": True}
    torch.manual_seed(seed)
    model = HubertModel(
        HubertConfig(**state["model_cfg"]), HubertPretrainingConfig(**state["task_cfg"]), state["dictionaries_symbols"]
    )
    state["model_weight"] = model.state_dict()
    return state


def _batch(speech: torch.Tensor, spans: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([end - start for start, end in spans])
    wavs = torch.zeros(len(spans), int(lengths.max()))
    for row, (start, end) in enumerate(spans):
        wavs[row, : end - start] = speech[start:end]
    return wavs, lengths


SPANS = [(0, 40000), (3000, 19001), (10000, 10000 + 6417), (20000, 20000 + 400)]


@pytest.mark.parametrize("variant", ["post_ln", "pre_ln", "wavlm"])
def test_padded_batch_equals_each_utterance_alone(speech, variant):
    from score_s3prl.checkpoints import build_base
    from score_s3prl.checkpoints.wavlm import tiny_wavlm_state

    state = {"post_ln": tiny_hubert_state, "pre_ln": _pre_ln_state, "wavlm": tiny_wavlm_state}[variant](0)
    model, normalize = build_base(state)
    wavs, lengths = _batch(speech, SPANS)
    with torch.no_grad():
        frames, frame_lengths = last_layer_features(model, wavs, lengths, normalize)
        assert frames.shape[:2] == (len(SPANS), int(frame_lengths.max()))
        for row, n in enumerate(lengths.tolist()):
            wav = wavs[row : row + 1, :n]
            if normalize:
                wav = F.layer_norm(wav, wav.shape[1:])
            alone, _ = model.extract_features(wav)  # s3prl's own forward, one utterance
            assert alone.shape[1] == frame_lengths[row]
            torch.testing.assert_close(frames[row, : frame_lengths[row]], alone[0], atol=1e-5, rtol=0)
    assert frame_lengths[-1] == 1  # 400 samples: exactly one frame


def test_frame_lengths_follow_the_convolutions(tiny_ckpt):
    model, _ = build_hubert(torch.load(tiny_ckpt, weights_only=True))
    lengths = torch.tensor([399, 400, 719, 720, 16000, 16319, 16320])
    expected = [model.feature_extractor(torch.zeros(1, n)).shape[-1] if n >= 400 else 0 for n in lengths.tolist()]
    assert conv_frame_lengths(model, lengths).tolist() == expected
    assert expected[1] == 1 and expected[4] == 49  # 400-sample receptive field; 49 frames in 1 s


def test_features_are_s3prl_upstream_last_hidden_state(tiny_ckpt, speech):
    from s3prl.upstream.hubert.expert import UpstreamExpert

    upstream = UpstreamExpert(str(tiny_ckpt)).eval()
    wav = speech[:30000]
    with torch.no_grad():
        expected = upstream([wav])["hidden_states"][-1]
        frames, _ = last_layer_features(upstream.model, wav[None], torch.tensor([wav.numel()]))
    torch.testing.assert_close(frames, expected, atol=1e-5, rtol=0)


def test_too_short_utterance_is_a_clear_error(tiny_ckpt):
    model, _ = build_hubert(torch.load(tiny_ckpt, weights_only=True))
    with pytest.raises(ScoreError, match="399 samples is too short"):
        last_layer_features(model, torch.zeros(2, 800), torch.tensor([800, 399]))


def _trainable_names(model: ScoreModel) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_freezing_is_by_structure():
    model = ScoreModel(tiny_hubert_state(0), trainable_layers=2, train_final_norm=True)
    prefixes = ("student.encoder.layers.2.", "student.encoder.layers.3.", "head.") + tuple(
        f"student.{norm}." for norm in FINAL_NORMS
    )
    expected = {name for name, _ in model.named_parameters() if name.startswith(prefixes)}
    assert _trainable_names(model) == expected
    assert "student.layer_norm.weight" in expected and "student.encoder.layer_norm.bias" in expected

    only_head = ScoreModel(tiny_hubert_state(0), trainable_layers=0, train_final_norm=False)
    assert _trainable_names(only_head) == {"head.weight", "head.bias"}
    with pytest.raises(ScoreError, match="trainable_layers: 5 is not within 0..4"):
        ScoreModel(tiny_hubert_state(0), trainable_layers=5)


def test_training_changes_only_trainable_weights(speech, soft_dtw):
    torch.manual_seed(0)
    model = ScoreModel(tiny_hubert_state(0), trainable_layers=1, train_final_norm=True)
    before = {name: t.clone() for name, t in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.01)
    student, lengths = _batch(speech, [(0, 8000), (8000, 14000)])
    teacher, teacher_lengths = _batch(speech, [(100, 8300), (7000, 14400)])
    for _ in range(3):
        optimizer.zero_grad()
        loss, _ = model(student, lengths, teacher, teacher_lengths)
        loss.backward()
        optimizer.step()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    after = model.state_dict()
    for name, value in before.items():
        if name in trainable:
            assert not torch.equal(after[name], value), f"{name} did not train"
        else:
            assert torch.equal(after[name], value), f"{name} changed but is frozen"
    assert any(name.startswith("teacher.") for name in before)  # the teacher was checked too


def test_frozen_eval_modes_and_determinism(speech):
    model = ScoreModel(tiny_hubert_state(0), trainable_layers=1, train_final_norm=False, dropout="frozen-eval")
    assert model.training and model.student.encoder.layers[3].training
    assert not model.teacher.training and not any(m.training for m in model.teacher.modules())
    assert not model.student.encoder.layers[2].training and not model.student.encoder.training

    inputs = []
    hook = model.student.encoder.layers[3].register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    wav, lengths = _batch(speech, [(0, 16000)])
    with torch.no_grad():
        outputs = [last_layer_features(model.student, wav, lengths)[0] for _ in range(2)]
    hook.remove()
    assert torch.equal(inputs[0], inputs[1])  # frozen layers: no dropout
    assert not torch.equal(outputs[0], outputs[1])  # the trainable top layer uses dropout

    model.eval()
    assert not any(m.training for m in model.modules())


def test_official_dropout_runs_the_teacher_in_train_mode(speech):
    model = ScoreModel(tiny_hubert_state(0), trainable_layers=1, train_final_norm=False)  # dropout="official"
    assert model.dropout == "official"
    assert model.teacher.training and all(m.training for m in model.teacher.modules())
    assert model.student.encoder.layers[0].training and model.student.dropout_input.training
    assert model.teacher.encoder.layers[0].self_attn.dropout_module.p > 0  # the base config's 0.1
    wav, lengths = _batch(speech, [(0, 16000)])

    def teacher_frames(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        with torch.no_grad():
            return last_layer_features(model.teacher, wav, lengths)[0]

    assert torch.equal(teacher_frames(1), teacher_frames(1))  # one dropout seed: the same output
    assert not torch.equal(teacher_frames(1), teacher_frames(2))  # another seed: other masks
    model.eval()
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        assert torch.equal(teacher_frames(1), teacher_frames(2))  # eval: no dropout at all


def test_wavlm_freezing_by_structure_keeps_the_relative_position_bias_with_layer_1():
    from score_s3prl.checkpoints.wavlm import tiny_wavlm_state

    bias = "encoder.layers.0.self_attn.relative_attention_bias.weight"
    top = ScoreModel(tiny_wavlm_state(0), trainable_layers=2, train_final_norm=True)
    trained = {n for n, p in top.student.named_parameters() if p.requires_grad}
    assert bias not in trained and "encoder.layers.3.self_attn.grep_a" in trained
    every = ScoreModel(tiny_wavlm_state(0), trainable_layers=4, train_final_norm=False)
    assert every.student.get_parameter(bias).requires_grad  # it trains with layer 1 only
    assert trainable_summary(top).splitlines()[-1].startswith("trainable:")


def test_mlp_head_is_linear_relu_linear():
    model = ScoreModel(tiny_hubert_state(0), head_dim=8, head="mlp")
    layers = list(model.head)
    assert [type(m) for m in layers] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert (layers[0].in_features, layers[0].out_features, layers[2].out_features) == (32, 8, 8)
    out = model.project(torch.randn(2, 5, 32))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 5))
    with pytest.raises(ScoreError, match="model.head"):
        ScoreModel(tiny_hubert_state(0), head="conv")


def test_unknown_dropout_mode_and_method_are_errors():
    with pytest.raises(ScoreError, match="model.dropout"):
        ScoreModel(tiny_hubert_state(0), dropout="eval")
    with pytest.raises(ScoreError, match="method"):
        ScoreModel(tiny_hubert_state(0), method="spin")


def test_loss_zero_for_identical_views_positive_otherwise(speech, soft_dtw):
    torch.manual_seed(0)
    model = ScoreModel(tiny_hubert_state(0)).eval()
    wav, lengths = _batch(speech, [(0, 12000), (20000, 29000)])
    with torch.no_grad():
        same, _ = model(wav, lengths, wav, lengths)
        other_wav, other_lengths = _batch(speech, [(40000, 52000), (500, 9500)])
        different, stats = model(wav, lengths, other_wav, other_lengths)
    assert abs(same.item()) < 1e-5
    assert different.item() > 1e-3
    assert stats["losses"].shape == (2,) and (stats["losses"] > 0).all()


def test_loss_is_divergence_over_summed_lengths(speech, soft_dtw):
    torch.manual_seed(0)
    model = ScoreModel(tiny_hubert_state(0)).eval()
    student, student_lengths = _batch(speech, [(0, 6400), (6400, 10000)])
    teacher, teacher_lengths = _batch(speech, [(300, 8000), (6000, 10800)])
    with torch.no_grad():
        loss, stats = model(student, student_lengths, teacher, teacher_lengths)
        xs, ls = last_layer_features(model.student, student, student_lengths)
        xt, lt = last_layer_features(model.teacher, teacher, teacher_lengths)
        xs, xt = model.project(xs), model.project(xt)
    assert torch.allclose(xs.norm(dim=-1)[0, : ls[0]], torch.ones(int(ls[0])), atol=1e-6)
    assert stats["student_frames"].tolist() == ls.tolist() and stats["teacher_frames"].tolist() == lt.tolist()
    expected = _divergence_bruteforce(xs, xt, ls, lt, gamma=0.1) / (ls + lt)
    torch.testing.assert_close(stats["losses"], expected.float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loss, expected.float().mean(), atol=1e-5, rtol=1e-4)


def test_export_state_is_the_student_in_s3prl_names(speech, soft_dtw):
    state = tiny_hubert_state(0)
    model = ScoreModel(state, trainable_layers=1, train_final_norm=False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    wav, lengths = _batch(speech, [(0, 8000)])
    model(wav, lengths, wav.flip(1), lengths)[0].backward()
    optimizer.step()
    exported = student_state_for_export(model)
    assert exported.keys() == state["model_weight"].keys()
    changed = {name for name, value in exported.items() if not torch.equal(value, state["model_weight"][name])}
    assert changed and all(name.startswith("encoder.layers.3.") for name in changed)
    rebuilt, _ = build_hubert({**state, "model_weight": exported})  # loads strictly
    assert torch.equal(rebuilt.encoder.layers[3].fc1.weight, model.student.encoder.layers[3].fc1.weight)


def test_summary_lists_what_trains():
    model = ScoreModel(tiny_hubert_state(0), trainable_layers=2, train_final_norm=True)
    rows = {line.split()[0]: line.split() for line in trainable_summary(model).splitlines()[1:-1]}
    assert [rows[name][2] for name in ("encoder.layers.0-1", "encoder.layers.2-3", "layer_norm",
                                        "encoder.layer_norm", "head")] == ["no", "yes", "yes", "yes", "yes"]
    assert [rows[name][2] for name in ("feature_extractor", "post_extract_proj", "encoder.pos_conv")] == ["no"] * 3
    assert "transformer input (post-LN)" in " ".join(rows["encoder.layer_norm"])
    student_total = sum(p.numel() for p in model.student.parameters())
    assert sum(int(r[1].replace(",", "")) for name, r in rows.items() if name != "head") == student_total
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert f"trainable: {trained:,}" in trainable_summary(model)

    pre_ln = trainable_summary(ScoreModel(_pre_ln_state(), trainable_layers=1))
    assert "after the last layer (pre-LN)" in pre_ln
