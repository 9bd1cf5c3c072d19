"""Convolutional stems of the vision models: images ``(B, 1, H, W)`` to a grid of ``E``-wide
patch vectors, by stride-2 convolutions.

* :func:`plain_stem`: three 3 x 3 stride-2 convolutions to 16, 32 and ``E`` channels with GELU
  between them (the detector's backbone; the captioner without a ``stem`` setting);
* :func:`conv_bn_stem`: a 3 x 3 stride-2 conv-BN-ReLU per channel count, then a 1 x 1 convolution
  to ``E`` (``vit-convstem``; the captioner's full preset).

Shape legend: B images, E width.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["plain_stem", "conv_bn_stem"]


def plain_stem(d_model: int) -> nn.Sequential:
    """``(B, 1, H, W) -> (B, E, H / 8, W / 8)``: three plain stride-2 convolutions."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.GELU(),
                         nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.GELU(),
                         nn.Conv2d(32, d_model, 3, stride=2, padding=1))


def conv_bn_stem(channels: Sequence[int], d_model: int) -> nn.Sequential:
    """``(B, 1, H, W) -> (B, E, H / 2^n, W / 2^n)`` for ``n = len(channels)``: a 3 x 3 stride-2
    conv-BN-ReLU per entry of ``channels``, then a 1 x 1 convolution to the width."""
    layers: list[nn.Module] = []
    cin = 1
    for cout in channels:
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    return nn.Sequential(*layers, nn.Conv2d(cin, d_model, 1))
