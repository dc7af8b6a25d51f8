"""TransDeepLab (Azad et al. 2022, arXiv:2208.00713): a pure-Swin DeepLabv3+ for 2-D segmentation.

The published "swin_224_7_2level" configuration, built from timm's Swin blocks so that the attention, window
partitioning and shift masks are timm's tested code and ImageNet Swin-T weights load by key:

* encoder: Swin-T's first three stages; low-level features after stage 0 (H/4, 96 ch, layer-normed),
  high-level after stage 2 (H/16, 384 ch);
* Swin spatial pyramid pooling: the high-level map through parallel Swin stages with a local window (7) and a
  global one (the whole H/16 map), concatenated along channels;
* cross-contextual attention: CBAM channel + spatial attention with a residual, projected to 96 channels;
* decoder: two Swin stages each followed by a 2x patch expansion (H/16 -> H/4), concatenation with the
  low-level features (192 ch), a 6-block Swin stage, two more 2x expansions (H/4 -> H) and a 1x1 conv.

All tensors between modules are channels-last (B, H, W, C), the layout timm's Swin blocks take; only the input
and the logits are NCHW. Every Swin stage is built for the resolution it runs at: timm precomputes the shifted
window attention mask from ``input_resolution``, so a stage fed another size would attend across the wrong
window borders.

With the defaults (2 classes, 224 x 224 x 3) the model has 21,142,332 parameters (the paper reports 21.14 M).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from timm.layers import PatchEmbed, calculate_drop_path_rates
from timm.models import adapt_input_conv
from timm.models.swin_transformer import SwinTransformerStage, checkpoint_filter_fn
from torch import nn

logger = logging.getLogger(__name__)

EMBED_DIM = 96
ENCODER_DEPTHS = (2, 2, 6)
ENCODER_HEADS = (3, 6, 12)
WINDOW_SIZE = 7
DROP_PATH_RATE = 0.1  # every Swin part of the published config uses 0.1, except the decoder's 6-block stage (0)
_ENCODER_KEY_PREFIXES = ("patch_embed.", "layers.0.", "layers.1.", "layers.2.")


class PatchExpand(nn.Module):
    """2x upsampling of a (B, H, W, C) map to (B, 2H, 2W, C): a linear C -> 4C, pixel shuffle, LayerNorm.

    TransDeepLab's variant keeps the channel count (Swin-Unet's halves it): the decoder concatenates the
    expanded 96-ch pyramid with the 96-ch low-level features and works at 192 ch from there.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.expand = nn.Linear(dim, 4 * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = self.expand(x).view(b, h, w, 2, 2, c)  # channel index = (p1 * 2 + p2) * C + c
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, c)
        return self.norm(x)


class SwinEncoder(nn.Module):
    """Patch embedding and Swin-T stages 0-2, named as in timm's SwinTransformer so its weights load by key."""

    def __init__(self, img_size: int, in_chans: int) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(
            img_size=img_size,
            patch_size=4,
            in_chans=in_chans,
            embed_dim=EMBED_DIM,
            norm_layer=nn.LayerNorm,
            output_fmt="NHWC",
        )
        grid = img_size // 4
        drop_path = calculate_drop_path_rates(DROP_PATH_RATE, list(ENCODER_DEPTHS), stagewise=True)
        stages = []
        for i, (depth, heads) in enumerate(zip(ENCODER_DEPTHS, ENCODER_HEADS, strict=True)):
            # timm downsamples at the start of a stage, so input_resolution is the map before PatchMerging.
            resolution = grid // 2 ** max(i - 1, 0)
            stages.append(
                SwinTransformerStage(
                    dim=EMBED_DIM * 2 ** max(i - 1, 0),
                    out_dim=EMBED_DIM * 2**i,
                    input_resolution=(resolution, resolution),
                    depth=depth,
                    downsample=i > 0,
                    num_heads=heads,
                    window_size=WINDOW_SIZE,
                    drop_path=drop_path[i],
                )
            )
        self.layers = nn.Sequential(*stages)
        self.low_level_norm = nn.LayerNorm(EMBED_DIM)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) -> low-level (B, H/4, W/4, 96), high-level (B, H/16, W/16, 384)."""
        low = self.layers[0](self.patch_embed(x))
        high = self.layers[2](self.layers[1](low))
        return self.low_level_norm(low), high


class CrossContextualAttention(nn.Module):
    """CBAM over the concatenated pyramid levels: reweights channels (i.e. levels) and positions, then projects.

    As published: shared channel MLP with reduction 12, spatial attention from a 1x1 conv over the channel-wise
    max and mean (CBAM's original uses 7x7), a residual around both, and a linear projection.
    """

    def __init__(self, dim: int, out_dim: int, reduction: int = 12) -> None:
        super().__init__()
        self.channel_mlp = nn.Sequential(
            nn.Linear(dim, dim // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(dim // reduction, dim, bias=False),
        )
        self.spatial = nn.Linear(2, 1)  # a 1x1 conv on the [max, mean] map, written channels-last
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = torch.sigmoid(self.channel_mlp(x.amax(dim=(1, 2))) + self.channel_mlp(x.mean(dim=(1, 2))))
        out = x * channel[:, None, None, :]
        pooled = torch.stack([out.amax(dim=-1), out.mean(dim=-1)], dim=-1)
        out = out * torch.sigmoid(self.spatial(pooled))
        return self.proj(out + x)


class SwinSpatialPyramidPooling(nn.Module):
    """Swin counterpart of ASPP: context at several window sizes instead of several dilation rates."""

    def __init__(self, dim: int, resolution: int, out_dim: int, window_sizes: tuple[int, ...]) -> None:
        super().__init__()
        # The global level (window = whole map) cannot shift, so the published code gives it a single block.
        self.levels = nn.ModuleList(
            SwinTransformerStage(
                dim=dim,
                out_dim=dim,
                input_resolution=(resolution, resolution),
                depth=1 if window >= resolution else 2,
                downsample=False,
                num_heads=3,
                window_size=window,
                drop_path=DROP_PATH_RATE,
            )
            for window in window_sizes
        )
        self.attention = CrossContextualAttention(len(window_sizes) * dim, out_dim)
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pyramid = torch.cat([level(x) for level in self.levels], dim=-1)
        return self.dropout(self.activation(self.attention(pyramid)))


class SwinDecoder(nn.Module):
    """Upsamples the pyramid to the low-level resolution, fuses the two and expands to full-resolution logits."""

    def __init__(self, num_classes: int, dim: int, high_resolution: int) -> None:
        super().__init__()
        resolution = high_resolution
        up_stages = []
        for _ in range(2):  # H/16 -> H/8 -> H/4, the encoder's high- to low-level distance
            up_stages.append(
                nn.Sequential(
                    SwinTransformerStage(
                        dim=dim,
                        out_dim=dim,
                        input_resolution=(resolution, resolution),
                        depth=2,
                        downsample=False,
                        num_heads=3,
                        window_size=WINDOW_SIZE,
                        drop_path=DROP_PATH_RATE,
                    ),
                    PatchExpand(dim),
                )
            )
            resolution *= 2
        self.up_stages = nn.Sequential(*up_stages)
        fused = 2 * dim
        self.fuse_stage = nn.Sequential(
            SwinTransformerStage(
                dim=fused,
                out_dim=fused,
                input_resolution=(resolution, resolution),
                depth=6,
                downsample=False,
                num_heads=3,
                window_size=WINDOW_SIZE,
            ),
            PatchExpand(fused),
        )
        self.norm = nn.LayerNorm(fused)
        self.final_expand = PatchExpand(fused)
        self.head = nn.Conv2d(fused, num_classes, kernel_size=1, bias=False)

    def forward(self, low_level: torch.Tensor, pyramid: torch.Tensor) -> torch.Tensor:
        x = torch.cat([low_level, self.up_stages(pyramid)], dim=-1)
        x = self.final_expand(self.norm(self.fuse_stage(x)))
        return self.head(x.permute(0, 3, 1, 2))


def _unwrap_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The state dict inside a ``{"model": ...}`` and/or ``{"state_dict": ...}`` wrapper, else the checkpoint."""
    checkpoint = checkpoint.get("model", checkpoint)
    return checkpoint.get("state_dict", checkpoint)


def _rename_legacy_pyramid_keys(
    module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, *_: object
) -> None:
    """Load-state-dict pre-hook: ``aspp.*`` → ``swin_spp.*``.

    The pyramid was once stored as ``aspp``; weights saved then (the bundled models/segmenter/model.pt, training
    checkpoints) keep loading, strictly, under the new name.
    """
    old, new = f"{prefix}aspp.", f"{prefix}swin_spp."
    for key in [k for k in state_dict if k.startswith(old)]:
        state_dict[new + key[len(old):]] = state_dict.pop(key)


class TransDeepLab(nn.Module):
    """TransDeepLab with the published Swin-T / 2-level pyramid defaults; (B, in_chans, S, S) -> (B, classes, S, S).

    The input size is fixed at construction (224 in the paper): the Swin stages' shift masks are built for it and
    the patch embedding rejects other sizes. With the defaults the model has 21,142,332 parameters.
    """

    def __init__(self, num_classes: int = 2, img_size: int = 224, in_chans: int = 3) -> None:
        super().__init__()
        # The H/16 map must tile into 7x7 windows and exceed one, or the local and global pyramid levels coincide.
        if img_size % (16 * WINDOW_SIZE) or img_size < 32 * WINDOW_SIZE:
            raise ValueError(f"img_size must be a multiple of 112 and at least 224, got {img_size}")
        self.num_classes = num_classes
        self.img_size = img_size
        self.in_chans = in_chans
        high_resolution = img_size // 16
        self.encoder = SwinEncoder(img_size, in_chans)
        self.swin_spp = SwinSpatialPyramidPooling(
            dim=EMBED_DIM * 4,
            resolution=high_resolution,
            out_dim=EMBED_DIM,
            window_sizes=(WINDOW_SIZE, high_resolution),
        )
        self.decoder = SwinDecoder(num_classes, dim=EMBED_DIM, high_resolution=high_resolution)
        self.register_load_state_dict_pre_hook(_rename_legacy_pyramid_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, img_size, img_size) -> logits (B, num_classes, img_size, img_size)."""
        low_level, high_level = self.encoder(x)
        return self.decoder(low_level, self.swin_spp(high_level))

    def load_encoder_checkpoint(self, path: str | os.PathLike[str]) -> list[str]:
        """Initialise the encoder from a local ImageNet Swin-T state dict; nothing is ever downloaded.

        Accepts timm's layout (``.safetensors`` or ``.pth``) and Microsoft's original ``swin_tiny_patch4_window7_224
        .pth`` (``{"model": ...}``, PatchMerging at the end of a stage), which timm's filter remaps. Stage 3, the final
        norm and the classifier are dropped; a patch embedding for other than 3 input channels is adapted the way
        timm does. Loads non-strictly and returns the encoder keys the file did not provide: ``low_level_norm.*``
        always (it is TransDeepLab's own); anything else means the file is not Swin-T.
        """
        path = Path(path)
        if path.suffix == ".safetensors":
            state = _unwrap_checkpoint(load_file(str(path)))
        else:
            state = _unwrap_checkpoint(torch.load(path, map_location="cpu", weights_only=True))
        # Filter first: timm's filter resolves each relative-position table's module, absent here for stage 3.
        state = {k: v for k, v in state.items() if k.startswith(_ENCODER_KEY_PREFIXES)}
        state = checkpoint_filter_fn(state, self.encoder)
        embed_key = "patch_embed.proj.weight"
        if embed_key in state and state[embed_key].shape[1] != self.in_chans:
            state[embed_key] = adapt_input_conv(self.in_chans, state[embed_key])
        result = self.encoder.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            logger.info("Ignored %d checkpoint keys with no encoder counterpart", len(result.unexpected_keys))
        if result.missing_keys:
            logger.warning("Encoder keys not in %s: %s", path, ", ".join(result.missing_keys))
        return list(result.missing_keys)
