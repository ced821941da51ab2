"""HV-BiLSTM patch conditioning (METHODS.md §1): bidirectional LSTMs along rows and columns."""

from __future__ import annotations

import torch
from torch import nn

from tagseg.config import LSTM_DROPOUT_MASKS, LSTM_INITS


class SequenceInputDropout(nn.Module):
    """Input dropout of a recurrent layer. x (N, T, D) -> same; identity in eval mode.

    ``per_step=False``: one mask per sequence and feature, the same at every step (Keras' documented
    ``LSTM(dropout=p)``, its per-step cell path). ``per_step=True``: a fresh mask at every step (plain
    dropout), what TF2 Keras' fused LSTM path -- the one the official code runs -- applies.
    """

    def __init__(self, p: float = 0.2, per_step: bool = False) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability {p}: must be in [0, 1)")
        self.p = p
        self.per_step = per_step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        shape = x.shape if self.per_step else (x.shape[0], 1, x.shape[2])
        keep = torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


DROPOUT_MASKS = LSTM_DROPOUT_MASKS


def keras_lstm_init_(lstm: nn.LSTM) -> None:
    """Keras' LSTM initialisation on every direction of ``lstm``: glorot-uniform input kernel,
    orthogonal recurrent kernel, bias 1 on the forget gate and 0 elsewhere (``unit_forget_bias``).
    Keras keeps one bias; torch's two are summed, so ``bias_hh`` is zero."""
    h = lstm.hidden_size
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(p)  # (4H, D): bound sqrt(6 / (D + 4H)) as Keras' (D, 4H) kernel
            elif name.startswith("weight_hh"):
                nn.init.orthogonal_(p)  # (4H, H): orthonormal columns = Keras' (H, 4H) with orthonormal rows
            elif name.startswith("bias_ih"):
                p.zero_()
                p[h:2 * h] = 1.0  # gate order i, f, g, o (Keras: i, f, c, o)
            elif name.startswith("bias_hh"):
                p.zero_()


class HVBiLSTM(nn.Module):
    """(B, h, w, D) -> (B, h, w, 4·hidden).

    Dropout on the input grid (``dropout``), then a bidirectional LSTM along every row (→ 2·hidden)
    and another along every column (→ 2·hidden), each with its own input dropout
    (``input_dropout``, METHODS.md §1 "LSTM input dropout 0.2"), concatenated (rows first).

    ``dropout_masks``: ``'per_step'`` (the official code: Keras' ``Bidirectional`` runs two LSTM
    layers, and TF2's fused LSTM drops every step's input independently, so each direction and step
    has its own mask), ``'per_direction'`` (one mask per sequence, drawn separately per direction:
    Keras' documented semantics) or ``'shared'`` (one mask per sequence for both directions). With
    separate directions the bidirectional LSTM runs on both masked copies in one batch and each
    direction keeps its half. ``init='keras'`` (glorot / orthogonal / forget-gate
    bias 1, as the official code) or ``'torch'`` (PyTorch's uniform ±1/sqrt(hidden)).
    """

    def __init__(self, in_dim: int, hidden: int = 192, dropout: float = 0.2, input_dropout: float = 0.2,
                 init: str = "keras", dropout_masks: str = "per_step") -> None:
        super().__init__()
        if init not in LSTM_INITS:
            raise ValueError(f"LSTM init {init!r}: choose one of {LSTM_INITS}")
        if dropout_masks not in DROPOUT_MASKS:
            raise ValueError(f"LSTM dropout masks {dropout_masks!r}: choose one of {DROPOUT_MASKS}")
        self.dropout = nn.Dropout(dropout)
        per_step = dropout_masks == "per_step"
        self.row_input_dropout = SequenceInputDropout(input_dropout, per_step)
        self.col_input_dropout = SequenceInputDropout(input_dropout, per_step)
        self.row_lstm = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)
        self.col_lstm = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)
        if init == "keras":
            keras_lstm_init_(self.row_lstm)
            keras_lstm_init_(self.col_lstm)
        self.per_direction = dropout_masks != "shared"
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

    def _direction_pair(self, lstm: nn.LSTM, drop: SequenceInputDropout, seq: torch.Tensor) -> torch.Tensor:
        """seq (N, T, D) -> (N, T, 2·hidden), input dropout shared or drawn per direction."""
        if not (self.per_direction and drop.training and drop.p > 0):
            return lstm(drop(seq))[0]
        n, hid = seq.shape[0], lstm.hidden_size
        both, _ = lstm(torch.cat([drop(seq), drop(seq)]))  # two independent masks
        return torch.cat([both[:n, :, :hid], both[n:, :, hid:]], dim=-1)

    def _bilstm(self, x: torch.Tensor, b: int, h: int, w: int, d: int) -> torch.Tensor:
        rows = self._direction_pair(self.row_lstm, self.row_input_dropout, x.reshape(b * h, w, d))
        cols = self._direction_pair(self.col_lstm, self.col_input_dropout, x.transpose(1, 2).reshape(b * w, h, d))
        rows = rows.reshape(b, h, w, -1)
        cols = cols.reshape(b, w, h, -1).transpose(1, 2)
        return torch.cat([rows, cols], dim=-1)
