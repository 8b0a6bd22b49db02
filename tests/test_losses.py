"""Soft-label losses equal their direct formulas; hard labels are the one-hot special case."""
from __future__ import annotations

import numpy as np
import torch

from workflow_scripts.labels import Head, LabelSpec
from workflow_scripts.losses import combined_loss, head_probabilities

SPEC = LabelSpec("multihead", (Head("a", "binary", "a"), Head("b", "binary", "b"),
                              Head("c", "multiclass", "c", ("x", "y", "z"))))


def direct_loss(logits, targets, smoothing=0.0):
    """The CDC write-up's formula: (BCE summed over binary heads + soft CE of the class head) / n_heads."""
    logits, targets = logits.numpy().astype(np.float64), targets.numpy().astype(np.float64)
    total = np.zeros(len(logits))
    for column in (0, 1):
        p = 1 / (1 + np.exp(-logits[:, column]))
        t = targets[:, column] * (1 - smoothing) + smoothing / 2
        total += -(t * np.log(p) + (1 - t) * np.log(1 - p))
    z = logits[:, 2:]
    log_softmax = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    t = targets[:, 2:] * (1 - smoothing) + smoothing / 3
    total += -(t * log_softmax).sum(axis=1)
    return (total / 3).mean()


def test_soft_targets_match_direct_formula():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=generator)
    soft = torch.rand(7, 5, generator=generator)
    soft[:, 2:] = soft[:, 2:] / soft[:, 2:].sum(dim=1, keepdim=True)
    for smoothing in (0.0, 0.1):
        assert np.isclose(float(combined_loss(logits, soft, SPEC, smoothing)), direct_loss(logits, soft, smoothing), atol=1e-5)


def test_hard_targets_equal_torch_builtin_losses():
    logits = torch.randn(6, 5)
    hard = torch.zeros(6, 5)
    hard[:, 0] = torch.tensor([0, 1, 1, 0, 1, 0.0])
    classes = torch.tensor([0, 2, 1, 1, 0, 2])
    hard[torch.arange(6), 2 + classes] = 1
    expected = (torch.nn.functional.binary_cross_entropy_with_logits(logits[:, :2], hard[:, :2], reduction="none").sum(1)
                + torch.nn.functional.cross_entropy(logits[:, 2:], classes, reduction="none")) / 3
    assert torch.isclose(combined_loss(logits, hard, SPEC), expected.mean(), atol=1e-6)


def test_head_probabilities_softmax_within_heads_only():
    probabilities = head_probabilities(torch.randn(4, 5), SPEC)
    assert torch.allclose(probabilities[:, 2:].sum(dim=1), torch.ones(4))
    assert ((probabilities[:, :2] > 0) & (probabilities[:, :2] < 1)).all()
