"""HV-BiLSTM patch conditioning (METHODS.md §1): bidirectional LSTMs along rows and columns."""

from __future__ import annotations

import torch
from torch import nn


class SequenceInputDropout(nn.Module):
    """Input dropout of a recurrent layer: one mask per sequence and feature, the same at every
    step (as Keras' ``LSTM(dropout=p)`` draws it). x (N, T, D) -> same; identity in eval mode."""

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability {p}: must be in [0, 1)")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty(x.shape[0], 1, x.shape[2], device=x.device, dtype=x.dtype).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class HVBiLSTM(nn.Module):
    """(B, h, w, D) -> (B, h, w, 4·hidden).

    Dropout on the input grid (``dropout``), then a bidirectional LSTM along every row (→ 2·hidden)
    and another along every column (→ 2·hidden), each with its own input dropout
    (``input_dropout``, METHODS.md §1 "LSTM input dropout 0.2"), concatenated (rows first).
    """

    def __init__(self, in_dim: int, hidden: int = 192, dropout: float = 0.2, input_dropout: float = 0.2) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.row_input_dropout = SequenceInputDropout(input_dropout)
        self.col_input_dropout = SequenceInputDropout(input_dropout)
        self.row_lstm = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)
        self.col_lstm = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 4 * hidden

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        b, h, w, d = grid.shape
        x = self.dropout(grid)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN has no bf16 LSTM on CPUs without AVX512-BF16 ("could not create a primitive
            # descriptor"): under CPU autocast the two LSTMs run in fp32; elsewhere autocast applies.
            with torch.autocast("cpu", enabled=False):
                return self._bilstm(x.float(), b, h, w, d)
        return self._bilstm(x, b, h, w, d)

    def _bilstm(self, x: torch.Tensor, b: int, h: int, w: int, d: int) -> torch.Tensor:
        rows, _ = self.row_lstm(self.row_input_dropout(x.reshape(b * h, w, d)))
        cols, _ = self.col_lstm(self.col_input_dropout(x.transpose(1, 2).reshape(b * w, h, d)))
        rows = rows.reshape(b, h, w, -1)
        cols = cols.reshape(b, w, h, -1).transpose(1, 2)
        return torch.cat([rows, cols], dim=-1)
