"""Length-aware batching: grouped batches for training, sorted batches for inference, dynamic padding."""
from __future__ import annotations

import numpy as np
import torch


def length_grouped_batches(lengths: np.ndarray, batch_size: int, seed: int, mega_factor: int = 50) -> list[np.ndarray]:
    """Shuffle, cut into mega-batches, sort each by length, split into batches, shuffle batch order.

    Batches hold rows of similar length (little padding) while the order stays random across epochs
    and seeds. The longest batch goes first so an out-of-memory error shows at step one.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    mega = batch_size * mega_factor
    batches = []
    for start in range(0, len(order), mega):
        chunk = order[start:start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    batch_order = rng.permutation(len(batches))
    batches = [batches[i] for i in batch_order]
    longest = int(np.argmax([lengths[b].max() for b in batches])) if batches else 0
    if batches:
        batches[0], batches[longest] = batches[longest], batches[0]
    return batches


def random_batches(n_rows: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """Plain shuffled batches (the Hugging Face default): the baseline bench/train_padding.py times."""
    order = np.random.default_rng(seed).permutation(n_rows)
    return [order[i:i + batch_size] for i in range(0, n_rows, batch_size)]


def sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Inference batches over rows sorted by length (longest first); callers restore the order."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(token_ids: list[list[int]], rows: np.ndarray, pad_token_id: int,
              pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad the rows' token ids to the longest row (or to `pad_to`); returns input_ids and attention_mask."""
    width = pad_to or max(len(token_ids[i]) for i in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for position, row in enumerate(rows):
        ids = token_ids[row][:width]
        input_ids[position, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[position, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
