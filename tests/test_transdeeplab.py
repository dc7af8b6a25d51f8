"""TransDeepLab shape, size, gradient flow, trainability and checkpoint loading, on CPU with random weights."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models.swin_transformer import SwinTransformerBlock

from ichseg.networks import TransDeepLab

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def model() -> TransDeepLab:
    torch.manual_seed(0)
    return TransDeepLab()


def test_forward_shape_and_block_resolutions(model: TransDeepLab) -> None:
    """Logits are [B, 2, 224, 224] and every Swin block runs at the resolution its shift mask was built for."""
    seen: list[tuple[int, int]] = []

    def check(block: SwinTransformerBlock, args: tuple[torch.Tensor]) -> None:
        assert tuple(args[0].shape[1:3]) == tuple(block.input_resolution)
        seen.append(tuple(block.input_resolution))

    hooks = [m.register_forward_pre_hook(check) for m in model.modules() if isinstance(m, SwinTransformerBlock)]
    try:
        with torch.no_grad():
            logits = model.eval()(torch.randn(2, 3, 224, 224))
    finally:
        for hook in hooks:
            hook.remove()
    assert logits.shape == (2, 2, 224, 224)
    assert torch.isfinite(logits).all()
    # encoder 2+2+6, pyramid 2+1, decoder 2+2+6
    assert len(seen) == 23
    assert sorted(set(seen)) == [(14, 14), (28, 28), (56, 56)]


def test_parameter_count(model: TransDeepLab) -> None:
    """Exactly the published swin_224_7_2level configuration (the paper reports 21.14 M); any change shows here."""
    assert sum(p.numel() for p in model.parameters()) == 21_142_332


def test_weights_saved_under_the_old_pyramid_name_load_strictly(model: TransDeepLab) -> None:
    """The Swin pyramid was once ``aspp``: state dicts with ``aspp.*`` keys (models/segmenter/model.pt) still load."""
    state = model.state_dict()
    legacy = {("aspp." + k[len("swin_spp."):] if k.startswith("swin_spp.") else k): v for k, v in state.items()}
    assert any(k.startswith("aspp.") for k in legacy)
    net = TransDeepLab()
    net.load_state_dict(legacy, strict=True)
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key])


def test_rejects_other_input_size(model: TransDeepLab) -> None:
    with pytest.raises(AssertionError):
        model(torch.randn(1, 3, 256, 256))
    with pytest.raises(ValueError):
        TransDeepLab(img_size=256)


def test_backward_reaches_patch_embedding(model: TransDeepLab) -> None:
    model.train().zero_grad()
    model(torch.randn(1, 3, 224, 224)).square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_sgd_steps_lower_loss() -> None:
    """A bright square labelled 1 on a dark background: two SGD steps on that fixed image lower the loss."""
    torch.manual_seed(0)
    net = TransDeepLab()
    image = torch.zeros(1, 3, 224, 224)
    label = torch.zeros(1, 224, 224, dtype=torch.long)
    image[..., 60:124, 80:144] = 1.0
    label[..., 60:124, 80:144] = 1
    loss_fn = torch.nn.CrossEntropyLoss()
    optimiser = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def eval_loss() -> float:
        with torch.no_grad():
            return loss_fn(net.eval()(image), label).item()

    before = eval_loss()
    net.train()
    for _ in range(2):
        optimiser.zero_grad()
        loss_fn(net(image), label).backward()
        optimiser.step()
    assert eval_loss() < 0.8 * before  # observed: about half after two steps, for several seeds


def _to_microsoft_key(key: str) -> str:
    return re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)


@pytest.fixture(scope="module")
def swin_tiny() -> torch.nn.Module:
    """An untrained timm Swin-T (no weights are downloaded), the source of the checkpoints below."""
    torch.manual_seed(1)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()


def _save(state: dict[str, torch.Tensor], tmp_path: Path, layout: str) -> Path:
    """state saved as timm does (.pth or .safetensors) or as Microsoft's original Swin release does."""
    if layout == "timm-safetensors":
        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
        return path
    path = tmp_path / "swin_tiny.pth"
    if layout == "microsoft":  # PatchMerging belongs to the end of the previous stage, wrapped in {"model": ...}
        torch.save({"model": {_to_microsoft_key(k): v for k, v in state.items()}}, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("layout", ["timm-pth", "timm-safetensors", "microsoft"])
def test_load_encoder_checkpoint(swin_tiny: torch.nn.Module, tmp_path: Path, layout: str) -> None:
    state = swin_tiny.state_dict()
    net = TransDeepLab(in_chans=1)
    missing = net.load_encoder_checkpoint(_save(state, tmp_path, layout))
    assert missing == ["low_level_norm.weight", "low_level_norm.bias"]
    encoder = net.encoder.state_dict()
    for key in ("layers.1.downsample.reduction.weight", "layers.2.blocks.5.attn.relative_position_bias_table"):
        assert torch.equal(encoder[key], state[key])
    assert encoder["patch_embed.proj.weight"].shape == (96, 1, 4, 4)  # adapted from 3 input channels


def test_encoder_matches_timm_swin_tiny(swin_tiny: torch.nn.Module, tmp_path: Path) -> None:
    """Once loaded, the encoder's high-level map is exactly timm Swin-T's stage-2 output."""
    net = TransDeepLab().eval()
    net.load_encoder_checkpoint(_save(swin_tiny.state_dict(), tmp_path, "timm-pth"))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(net.encoder(x)[1], swin_tiny.layers[:3](swin_tiny.patch_embed(x)))
