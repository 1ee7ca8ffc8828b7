"""U-Net used as the denoiser ε_θ(x_t, y, γ_t) and as the schedule network S(y).

The noise level enters as a per-pixel map (the γ map, one channel per output
channel), not as a scalar time: it is embedded with softplus(conv7×7) at every
resolution (average-pooled to that level) and added inside every residual
block. 2-D multi-head self-attention runs at the lowest resolution only.
Inputs of any size are padded to a multiple of the network's stride and
cropped back, so callers never have to. ``padding="reflect"`` makes every
convolution pad by reflection instead of zeros: a constant input then gives a
constant output, and the network does not ring in from the image borders
(zero padding is seen as a dark frame).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetSize:
    """Width and depth of a U-Net; ``channel_mults`` has one entry per level."""

    base_channels: int
    channel_mults: tuple[int, ...]
    blocks_per_level: int
    attention_heads: int
    dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> UNetSize:
        return cls(**{**data, "channel_mults": tuple(data["channel_mults"])})


#: Denoiser sizes. ``tiny`` is for tests, ``small`` for CPU training,
#: ``paper`` is the size used in the CVDM paper (base 64, mults 1,2,4,8,8).
DENOISER_PRESETS: dict[str, UNetSize] = {
    "tiny": UNetSize(8, (1, 2, 2), 1, 1),
    "small": UNetSize(16, (1, 2, 4), 1, 2),
    "paper": UNetSize(64, (1, 2, 4, 8, 8), 2, 8),
}

#: Schedule-network sizes: λ(y) is smooth, so S is smaller than the denoiser.
SCHEDULE_PRESETS: dict[str, UNetSize] = {
    "tiny": UNetSize(8, (1, 2, 2), 1, 1),
    "small": UNetSize(8, (1, 2, 4), 1, 1),
    "paper": UNetSize(32, (1, 2, 4, 8), 1, 4),
}


def _group_count(channels: int) -> int:
    """Largest GroupNorm group count ≤ 32 with at least 4 channels per group."""
    for groups in (32, 16, 8, 4, 2):
        if channels % groups == 0 and channels // groups >= 4:
            return groups
    return 1


PADDINGS = ("zeros", "reflect")


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, gamma_ch: int, dropout: float, padding: str = "zeros"):
        super().__init__()
        self.norm1 = nn.GroupNorm(_group_count(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, padding_mode=padding)
        self.gamma_proj = nn.Conv2d(gamma_ch, out_ch, 1) if gamma_ch else None
        self.norm2 = nn.GroupNorm(_group_count(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, padding_mode=padding)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, gamma_features: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.gamma_proj is not None:
            h = h + self.gamma_proj(gamma_features)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over all H·W positions (not rows only)."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(_group_count(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        # (B, heads, tokens, head_dim), contiguous: with a strided head_dim PyTorch falls back to
        # the math kernel, which materialises the tokens² matrix (0.5 GB and 11× the time for
        # 4 samples of a 256² tile on the CPU; benchmarks/attention_layout.py)
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)
        attended = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    """U-Net mapping ``(B, in_channels, H, W)`` to ``(B, out_channels, H, W)``.

    With ``gamma_channels > 0`` the forward pass takes a γ map
    ``(B, gamma_channels, H, W)`` that conditions every residual block.
    ``padding``: one of :data:`PADDINGS`, used by every convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        size: UNetSize,
        gamma_channels: int = 0,
        padding: str = "zeros",
    ):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"unknown padding {padding!r}; expected one of {PADDINGS}")
        self.size = size
        self.padding = padding
        self.stride = 2 ** (len(size.channel_mults) - 1)
        widths = [size.base_channels * m for m in size.channel_mults]
        embed_ch = widths if gamma_channels else [0] * len(widths)
        self.gamma_embed = nn.ModuleList(
            [nn.Conv2d(gamma_channels, ch, 7, padding=3, padding_mode=padding) for ch in widths]
            if gamma_channels else []
        )

        self.input_conv = nn.Conv2d(in_channels, size.base_channels, 3, padding=1, padding_mode=padding)
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skip_widths = [size.base_channels]
        ch = size.base_channels
        for level, width in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(size.blocks_per_level):
                blocks.append(ResidualBlock(ch, width, embed_ch[level], size.dropout, padding))
                ch = width
                skip_widths.append(ch)
            self.down_blocks.append(blocks)
            if level < len(widths) - 1:
                self.downsamplers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1, padding_mode=padding))
                skip_widths.append(ch)

        self.mid_block1 = ResidualBlock(ch, ch, embed_ch[-1], size.dropout, padding)
        self.mid_attention = SelfAttention2d(ch, size.attention_heads)
        self.mid_block2 = ResidualBlock(ch, ch, embed_ch[-1], size.dropout, padding)

        self.up_blocks = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for _ in range(size.blocks_per_level + 1):
                blocks.append(
                    ResidualBlock(ch + skip_widths.pop(), widths[level], embed_ch[level], size.dropout, padding)
                )
                ch = widths[level]
            self.up_blocks.append(blocks)
            if level > 0:
                self.upsamplers.append(nn.Conv2d(ch, ch, 3, padding=1, padding_mode=padding))

        self.output_norm = nn.GroupNorm(_group_count(ch), ch)
        self.output_conv = nn.Conv2d(ch, out_channels, 3, padding=1, padding_mode=padding)
        nn.init.zeros_(self.output_conv.weight)
        nn.init.zeros_(self.output_conv.bias)

    def _gamma_features(self, gamma: torch.Tensor | None) -> list[torch.Tensor | None]:
        if not self.gamma_embed:
            return [None] * len(self.size.channel_mults)
        return [
            F.softplus(embed(F.avg_pool2d(gamma, 2**level) if level else gamma))
            for level, embed in enumerate(self.gamma_embed)
        ]

    def forward(self, x: torch.Tensor, gamma: torch.Tensor | None = None) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.stride, -width % self.stride
        if self.padding == "reflect":  # the 7×7 γ embedding reflects 3 pixels: 4 at the lowest level
            pad_h, pad_w = max(pad_h, 4 * self.stride - height), max(pad_w, 4 * self.stride - width)
        if pad_h or pad_w:
            # replicate works for any size; reflect fails on images smaller than the pad
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
            if gamma is not None:
                gamma = F.pad(gamma, (0, pad_w, 0, pad_h), mode="replicate")
        gamma_features = self._gamma_features(gamma)

        h = self.input_conv(x)
        skips = [h]
        for level, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, gamma_features[level])
                skips.append(h)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)
                skips.append(h)

        h = self.mid_block1(h, gamma_features[-1])
        h = self.mid_attention(h)
        h = self.mid_block2(h, gamma_features[-1])

        for i, blocks in enumerate(self.up_blocks):
            level = len(self.down_blocks) - 1 - i
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), gamma_features[level])
            if i < len(self.upsamplers):
                h = self.upsamplers[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))

        out = self.output_conv(F.silu(self.output_norm(h)))
        return out[..., :height, :width]
