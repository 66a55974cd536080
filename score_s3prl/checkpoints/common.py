"""Small pieces every checkpoint format shares: the strict weights check, one-line messages,
and the toy CNN of the tiny random models."""

from __future__ import annotations

import torch

from ..errors import ScoreError

# 7 conv layers with HuBERT's strides (5*2*2*2*2*2*2 = 320 samples per frame), 8 channels.
TINY_CONV_LAYERS = "[(8, 10, 5)] + [(8, 3, 2)] * 4 + [(8, 2, 2)] * 2"


def first_line(exc: BaseException) -> str:
    """The first line of an error's message: a ScoreError stays one line."""
    return (str(exc).splitlines() or [""])[0]


def check_state_dict(model: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Raise a ScoreError naming ``source`` if ``weights`` does not fit ``model`` exactly."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [
        f"{key} {tuple(weights[key].shape)} != {tuple(expected[key].shape)}"
        for key in expected
        if key in weights and weights[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing weights {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected weights {_first(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes {_first(wrong)}")
    if problems:
        raise ScoreError(f"{source}: weights do not fit the model config: {'; '.join(problems)}")


def _first(items: list[str], n: int = 3) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more
