"""Backbones and heads: the ViT token API used by iBOT (masking) and MSN (dropping)."""

from __future__ import annotations

import pytest
import torch

from protossl.models import ViTBackbone, build_backbone


@pytest.fixture()
def vit() -> ViTBackbone:
    torch.manual_seed(0)
    net = build_backbone("vit_tiny", 16)
    assert isinstance(net, ViTBackbone)
    with torch.no_grad():
        net.mask_token.normal_()  # zeros at init; make it distinguishable
    return net.eval()


def test_class_token_equals_forward(vit: ViTBackbone) -> None:
    x = torch.randn(3, 3, 16, 16)
    cls, patches = vit.forward_tokens(x)
    torch.testing.assert_close(cls, vit(x))
    assert patches.shape == (3, 16, vit.embed_dim)
    assert vit.patch_grid(16, 16) == (4, 4) and vit.patch_grid(7, 7) == (2, 2)


def test_masked_patches_ignore_their_pixels(vit: ViTBackbone) -> None:
    x = torch.randn(2, 3, 16, 16)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1:3, 0:2] = True  # pixels rows 4-11, cols 0-7 of image 0
    y = x.clone()
    y[0, :, 4:12, 0:8] = torch.randn(3, 8, 8)  # change only the masked pixels
    cls_x, patches_x = vit.forward_tokens(x, mask=mask)
    cls_y, patches_y = vit.forward_tokens(y, mask=mask)
    torch.testing.assert_close(cls_x, cls_y)
    torch.testing.assert_close(patches_x, patches_y)
    # Without the mask the change is visible; an all-False mask changes nothing.
    assert not torch.allclose(vit.forward_tokens(y)[0], cls_x)
    none = torch.zeros_like(mask)
    torch.testing.assert_close(vit.forward_tokens(x, mask=none)[0], vit(x))


def test_mask_token_gets_gradient_only_when_used(vit: ViTBackbone) -> None:
    x = torch.randn(2, 3, 16, 16)
    vit.forward_tokens(x)[0].sum().backward()
    assert vit.mask_token.grad is None or vit.mask_token.grad.abs().max() == 0
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[1, 0, 0] = True
    vit.forward_tokens(x, mask=mask)[0].sum().backward()
    assert vit.mask_token.grad is not None and vit.mask_token.grad.abs().max() > 0


def test_dropped_patches_ignore_their_pixels_and_order_is_kept(vit: ViTBackbone) -> None:
    x = torch.randn(2, 3, 16, 16)
    keep = torch.tensor([[0, 5, 10, 15], [3, 2, 1, 0]])
    cls, patches = vit.forward_tokens(x, keep=keep)
    assert patches.shape == (2, 4, vit.embed_dim)
    y = x.clone()
    y[0, :, 0:4, 4:8] = 0.0  # patch 1 of image 0 is dropped
    torch.testing.assert_close(vit.forward_tokens(y, keep=keep)[0], cls)
    # Keeping every patch is the plain forward.
    every = torch.arange(16).expand(2, 16)
    torch.testing.assert_close(vit.forward_tokens(x, keep=every)[0], vit(x))


def test_bad_mask_shape(vit: ViTBackbone) -> None:
    with pytest.raises(ValueError, match="mask must have shape"):
        vit.forward_tokens(torch.randn(2, 3, 16, 16), mask=torch.zeros(2, 16, dtype=torch.bool))


def test_cnn_tiny_matches_its_definition_and_takes_any_size() -> None:
    # Independent forward: conv3x3 (stride 1, 2, 1) + batch-stat BatchNorm + ReLU, mean pool.
    torch.manual_seed(0)
    net = build_backbone("cnn_tiny", image_size=8)
    net.train()
    x = torch.randn(5, 3, 8, 8)
    h = x
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for conv, norm, stride in zip(convs, norms, (1, 2, 1), strict=True):
        h = torch.nn.functional.conv2d(h, conv.weight, stride=stride, padding=1)
        mean = h.mean(dim=(0, 2, 3), keepdim=True)
        var = h.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        h = torch.relu((h - mean) / torch.sqrt(var + norm.eps))
    expected = h.mean(dim=(2, 3))
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)
    assert net.embed_dim == 128
    assert net(torch.randn(3, 3, 4, 4)).shape == (3, 128)  # local crops of 4 px
