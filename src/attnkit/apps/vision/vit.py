"""Image classifiers for Fashion-MNIST, with and without attention.

* ``vit``: a Vision Transformer (Dosovitskiy et al. 2021): non-overlapping ``patch x patch``
  patches embedded by one strided convolution, a class token, learned positions, pre-norm
  :class:`attnkit.nn.TransformerEncoderLayer` s with global self-attention, the class token's
  final state classified.
* ``vit-neighborhood``: the same, with neighbourhood attention
  (:func:`attnkit.masks.neighborhood_2d`, the class token global) in the first ``local_layers``
  layers and global attention after them.
* ``vit-convstem``: the ViT with a convolutional stem in place of the patchify convolution
  (Xiao et al. 2021, "Early convolutions help transformers see better"): ``log2(patch)`` 3 x 3
  stride-2 convolutions with batch norm and ReLU, then a 1 x 1 convolution to the model width; the
  same patch grid and transformer.
* ``cnn``: a small convolutional network without attention (two conv-conv-pool stages, global
  average pooling, a linear classifier), the baseline.

Every model maps ``images (B, 1, H, W)`` float (normalised) to ``logits (B, C)``.

Shape legend: B batch, H x W image, P patch, N = (H / P) * (W / P) patches, E model width,
C classes, L layers, T = N + 1 tokens.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import AttnKitError, ShapeError
from ...interpret import attention_rollout, capture_attention
from ...masks import Mask, neighborhood_2d
from ...nn import TransformerEncoderLayer
from .stems import conv_bn_stem

__all__ = ["MODELS", "ModelConfig", "ViT", "SmallCNN", "build_model", "rollout_maps"]

MODELS = ("vit", "vit-neighborhood", "vit-convstem", "cnn")


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of an image classifier (the CNN uses ``channels``; the ViTs the rest)."""

    kind: str  # one of MODELS
    image: int = 28  # square input side H = W
    patch: int = 4  # ViT patch side P (H must divide by it)
    d_model: int = 64  # ViT width E
    layers: int = 6  # ViT encoder layers L
    heads: int = 4  # ViT attention heads
    ff: int = 128  # ViT feed-forward size
    dropout: float = 0.0  # ViT dropout (attention weights, feed-forward, residual)
    local_layers: int = 3  # vit-neighborhood: the first layers with neighbourhood attention
    radius: int = 1  # vit-neighborhood: Chebyshev radius in patches
    channels: tuple[int, int] = (32, 64)  # CNN channels of its two stages
    stem: tuple[int, ...] = (32, 64)  # vit-convstem: channels of its log2(patch) stride-2 convolutions
    classes: int = 10  # C
    impl: str = "auto"  # attnkit implementation of every attention call

    def __post_init__(self) -> None:
        if self.kind not in MODELS:
            raise AttnKitError(f"model {self.kind!r} is not known; expected one of {', '.join(MODELS)}")
        if self.image % self.patch:
            raise ShapeError(f"image side {self.image} must divide by the patch side {self.patch}")
        if self.kind == "vit-neighborhood" and not 0 <= self.local_layers <= self.layers:
            raise AttnKitError(f"local_layers must be in 0..layers={self.layers}; got {self.local_layers}")
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "stem", tuple(self.stem))
        if self.kind == "vit-convstem":
            steps = self.patch.bit_length() - 1
            if self.patch != 1 << steps or steps < 1:
                raise ShapeError(f"vit-convstem needs a patch side that is a power of 2 (>= 2); got {self.patch}")
            if len(self.stem) != steps:
                raise AttnKitError(f"vit-convstem with patch {self.patch} needs stem = {steps} channel counts (one "
                                   f"per stride-2 convolution); got {self.stem}")

    @property
    def grid(self) -> int:
        """Patches per side, H / P."""
        return self.image // self.patch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_images(x: Tensor, side: int) -> None:
    if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != side or x.shape[3] != side:
        raise ShapeError(f"images must be (B, 1, {side}, {side}); got shape {tuple(x.shape)}")


class ViT(nn.Module):
    """A Vision Transformer; with ``local_layers > 0`` (``vit-neighborhood``) its first layers
    attend within a neighbourhood of patches. ``forward(images (B, 1, H, W)) -> logits (B, C)``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        if c.kind == "vit-convstem":
            self.patch_embed = conv_bn_stem(c.stem, c.d_model)
        else:
            self.patch_embed = nn.Conv2d(1, c.d_model, c.patch, stride=c.patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.d_model))
        self.pos_embed = nn.Parameter(torch.randn(1, c.grid * c.grid + 1, c.d_model) * 0.02)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(c.d_model, c.heads, c.ff, c.dropout, activation="gelu", norm_first=True,
                                    impl=c.impl) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.classes)
        local = c.local_layers if c.kind == "vit-neighborhood" else 0
        self._masks: list[Mask | None] = [neighborhood_2d(c.grid, c.grid, c.radius, extra_tokens=1) if i < local
                                          else None for i in range(c.layers)]

    def tokens(self, images: Tensor) -> Tensor:
        """Patch tokens with the class token first: ``(B, T, E)``."""
        _check_images(images, self.config.image)
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, E)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, E)
        return torch.cat([cls, x], 1) + self.pos_embed  # (B, T, E)

    def forward(self, images: Tensor) -> Tensor:
        x = self.tokens(images)  # (B, T, E)
        for layer, mask in zip(self.layers, self._masks):
            x = layer(x, mask=mask)  # (B, T, E)
        return self.head(self.norm(x[:, 0]))  # (B, C)


class SmallCNN(nn.Module):
    """Two stages of conv-BN-ReLU x2 + max-pool, global average pooling, a linear classifier;
    ``forward(images (B, 1, H, W)) -> logits (B, C)``. No attention anywhere."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        a, b = config.channels

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(*block(1, a), *block(a, a), nn.MaxPool2d(2),
                                      *block(a, b), *block(b, b), nn.MaxPool2d(2))
        self.head = nn.Linear(b, config.classes)

    def forward(self, images: Tensor) -> Tensor:
        _check_images(images, self.config.image)
        x = self.features(images)  # (B, c, H / 4, W / 4)
        return self.head(x.mean((2, 3)))  # (B, C)


def build_model(config: ModelConfig) -> nn.Module:
    """The model ``config.kind`` names, freshly initialised."""
    return SmallCNN(config) if config.kind == "cnn" else ViT(config)


def rollout_maps(model: ViT, images: Tensor) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020) from the class token to every patch, per image:
    ``(B, H / P, W / P)``, each map summing to the share of the class token's final state that
    comes from the patches (the rest stays on the class token)."""
    if not isinstance(model, ViT):
        raise AttnKitError(f"rollout needs a ViT; got a {type(model).__name__} (a model without attention)")
    g = model.config.grid
    model.eval()
    with torch.no_grad(), capture_attention(model) as cap:
        model(images)
    weights = cap.stack()  # (L, B, heads, T, T)
    maps = [attention_rollout(weights[:, b])[0, 1:].view(g, g) for b in range(images.shape[0])]  # (g, g) each
    return torch.stack(maps).float()  # (B, g, g)
