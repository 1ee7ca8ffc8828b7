import pytest
import torch

from napari_cvdm.model import DENOISER_PRESETS, UNet


@pytest.mark.parametrize("shape", [(16, 16), (13, 22), (3, 5)])
def test_any_image_size_keeps_its_shape(shape):
    torch.manual_seed(0)
    net = UNet(3, 2, DENOISER_PRESETS["tiny"], gamma_channels=2)
    out = net(torch.randn(2, 3, *shape), torch.rand(2, 2, *shape))
    assert out.shape == (2, 2, *shape)


def test_gamma_map_changes_the_output():
    torch.manual_seed(0)
    net = UNet(2, 1, DENOISER_PRESETS["tiny"], gamma_channels=1)
    with torch.no_grad():  # zero-initialised output layers would hide the dependence
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(1, 2, 16, 16)
    assert not torch.allclose(net(x, torch.full((1, 1, 16, 16), 0.9)), net(x, torch.full((1, 1, 16, 16), 0.1)))


def test_attention_mixes_distant_pixels():
    """A change in one corner reaches the opposite corner only through 2-D attention."""
    torch.manual_seed(0)
    net = UNet(1, 1, DENOISER_PRESETS["tiny"])
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.zeros(1, 1, 64, 64, requires_grad=True)
    net(x)[0, 0, -1, -1].backward()
    assert x.grad[0, 0, :4, :4].abs().sum() > 0


def test_attention_matches_the_explicit_softmax_formula():
    from napari_cvdm.model.unet import SelfAttention2d

    torch.manual_seed(0)
    attention = SelfAttention2d(8, heads=2)
    torch.nn.init.normal_(attention.out.weight)
    x = torch.randn(2, 8, 5, 6)
    q, k, v = attention.qkv(attention.norm(x)).reshape(2, 3, 2, 4, 30).unbind(1)  # (B, heads, head_dim, tokens)
    weights = torch.softmax(q.transpose(-1, -2) @ k / 4**0.5, dim=-1)  # (B, heads, tokens, tokens)
    expected = x + attention.out((v @ weights.transpose(-1, -2)).reshape(2, 8, 5, 6))
    with torch.no_grad():
        assert torch.allclose(attention(x), expected, atol=1e-5)
