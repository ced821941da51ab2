"""HV-BiLSTM patch conditioning (METHODS.md §1): bidirectional LSTMs along rows and columns."""

from __future__ import annotations

import torch
from torch import nn


class HVBiLSTM(nn.Module):
    """(B, h, w, D) -> (B, h, w, 4·hidden).

    Dropout on the input grid, then a bidirectional LSTM along every row (→ 2·hidden) and
    another along every column (→ 2·hidden), concatenated (rows first).
    """

    def __init__(self, in_dim: int, hidden: int = 192, dropout: float = 0.2) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.row_lstm = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)
        self.col_lstm = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)
        self.out_dim = 4 * hidden

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        b, h, w, d = grid.shape
        x = self.dropout(grid)
        rows, _ = self.row_lstm(x.reshape(b * h, w, d))
        cols, _ = self.col_lstm(x.transpose(1, 2).reshape(b * w, h, d))
        rows = rows.reshape(b, h, w, -1)
        cols = cols.reshape(b, w, h, -1).transpose(1, 2)
        return torch.cat([rows, cols], dim=-1)
