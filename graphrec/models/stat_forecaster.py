"""LiveForesighter's statistic sequence forecaster (§2.2): RevIN + iTransformer + H-step head.

A room's statistics (exposure, audience, comments, likes, gifts, ...) every 30 s form ``N``
variates over ``T`` steps. RevIN normalises each variate of each window by its own mean and standard
deviation (with a learnable affine map), so rooms of very different sizes share one model; the
iTransformer embeds each variate's whole history as one token and attends *across variates*; a
linear head predicts the next ``H`` steps of every variate, and De-RevIN maps them back. Trained with
MSE. For the ranker it exposes ``(forecast, encoding)`` under stop-gradient, as the paper's
``stop(flatten(Ŝ), flatten(E))``.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class RevIN(nn.Module):
    """Reversible instance normalisation over the time axis of ``[B, T, N]`` inputs."""

    def __init__(self, num_variates: int, affine: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_variates))
            self.bias = nn.Parameter(torch.zeros(num_variates))

    def normalize(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(x_norm, mean, std)``; mean/std are ``[B, 1, N]``, kept for :meth:`denormalize`."""
        mean = x.mean(dim=1, keepdim=True).detach()
        std = torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + self.eps).detach()
        out = (x - mean) / std
        if self.affine:
            out = out * self.weight + self.bias
        return out, mean, std

    def denormalize(self, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """The exact inverse of :meth:`normalize` for the same ``mean``/``std``."""
        if self.affine:
            y = (y - self.bias) / self.weight
        return y * std + mean


class StatForecaster(nn.Module):
    """``x [B, T_in, N] -> (forecast [B, H, N], encoding [B, N, dim])``."""

    def __init__(self, num_variates: int, input_steps: int, horizon: int = 3, dim: int = 64, layers: int = 2,
                 heads: int = 4, dropout: float = 0.1, revin_affine: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"stat_forecast.dim={dim} must be divisible by stat_forecast.heads={heads}")
        self.num_variates, self.input_steps, self.horizon, self.dim = num_variates, input_steps, horizon, dim
        self.revin = RevIN(num_variates, affine=revin_affine)
        self.embed = nn.Linear(input_steps, dim)                       # a variate's history -> one token
        self.variate_embedding = nn.Parameter(torch.zeros(num_variates, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, horizon)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if x.shape[1:] != (self.input_steps, self.num_variates):
            raise ValueError(f"StatForecaster expects [B, {self.input_steps}, {self.num_variates}], got {list(x.shape)}")
        z, mean, std = self.revin.normalize(x)
        tokens = self.embed(z.transpose(1, 2)) + self.variate_embedding   # [B, N, dim]
        enc = self.norm(self.encoder(tokens))
        y = self.head(enc).transpose(1, 2)                                 # [B, H, N] normalised
        return self.revin.denormalize(y, mean, std), enc

    @classmethod
    def from_config(cls, sec, num_variates: int) -> "StatForecaster":
        """Build from the ``stat_forecast`` config section."""
        return cls(num_variates, sec["input_steps"], sec["horizon"], sec["dim"], sec["layers"], sec["heads"],
                   sec["dropout"], sec["revin_affine"])

    def checkpoint(self, sec, features=()) -> dict:
        """What the pipeline saves: weights plus everything :meth:`from_checkpoint` needs."""
        return {"state_dict": self.state_dict(), "hparams": dict(sec), "num_variates": self.num_variates,
                "features": list(features)}

    @classmethod
    def from_checkpoint(cls, path) -> "StatForecaster":
        """Load a saved forecaster (``torch.load(weights_only=True)``), in eval mode."""
        from ..checkpoint import load_checkpoint

        ck = load_checkpoint(path)
        model = cls.from_config(ck["hparams"], ck["num_variates"])
        model.load_state_dict(ck["state_dict"])
        return model.eval()

    @torch.no_grad()
    def ranker_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stop-gradient ``[flatten(forecast), flatten(encoding)]`` for the ranker: ``[B, N*(H+dim)]``."""
        forecast, enc = self.forward(x)
        return torch.cat([forecast.flatten(1), enc.flatten(1)], dim=1).detach()
