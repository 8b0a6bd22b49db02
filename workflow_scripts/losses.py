"""Losses over a LabelSpec's combined output: soft cross-entropy per multiclass head, BCE per binary column.

Targets may be hard (one-hot / 0-1) or soft (probabilities from a teacher); the same formula serves both.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from workflow_scripts.labels import LabelSpec


def head_probabilities(logits: torch.Tensor, spec: LabelSpec) -> torch.Tensor:
    """Softmax within each multiclass head, sigmoid for each binary column. logits: (n_rows, n_columns)."""
    parts = []
    for head, columns in spec.head_slices():
        block = logits[:, columns].float()
        parts.append(torch.softmax(block, dim=-1) if head.type == "multiclass" else torch.sigmoid(block))
    return torch.cat(parts, dim=1)


def combined_loss(logits: torch.Tensor, targets: torch.Tensor, spec: LabelSpec,
                  label_smoothing: float = 0.0, row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over heads of each head's loss; each binary column counts as one head (as in the CDC solution).

    logits, targets: (n_rows, n_columns); row_weights: (n_rows,) or None.
    """
    per_row = torch.zeros(logits.shape[0], dtype=torch.float32, device=logits.device)
    n_heads = 0
    for head, columns in spec.head_slices():
        block, target = logits[:, columns].float(), targets[:, columns].float()
        if head.type == "multiclass":
            n_classes = block.shape[1]
            target = target * (1 - label_smoothing) + label_smoothing / n_classes
            per_row = per_row - (target * torch.log_softmax(block, dim=-1)).sum(dim=-1)
            n_heads += 1
        else:
            target = target * (1 - label_smoothing) + label_smoothing / 2
            per_row = per_row + F.binary_cross_entropy_with_logits(block, target, reduction="none").sum(dim=-1)
            n_heads += block.shape[1]
    per_row = per_row / n_heads
    if row_weights is None:
        return per_row.mean()
    return (per_row * row_weights).sum() / row_weights.sum().clamp_min(1e-12)
