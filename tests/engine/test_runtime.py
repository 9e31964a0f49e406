"""Runtime settings: bf16 autocast on CPU, precision/device errors, compile and channels-last."""

from __future__ import annotations

import pytest
import torch
from reference import random_crops

from protossl.config import RuntimeConfig, load_config
from protossl.core.errors import UserError
from protossl.engine.runtime import Runtime
from protossl.methods import build_method

TINY = [
    "model.num_prototypes=32",
    "model.head_hidden_dim=32",
    "model.bottleneck_dim=16",
    "data.num_local_crops=2",
]


def test_bf16_autocast_step_is_close_to_fp32_and_regularizer_stays_float32() -> None:
    torch.manual_seed(0)
    method = build_method(load_config("dino-kp", overrides=[*TINY, "model.backbone=vit_tiny"]))
    views = random_crops(batch=4, seed=0)
    reference = method.training_step(views, 0.04)
    runtime = Runtime(RuntimeConfig(device="cpu", precision="bf16"))
    seen: list[torch.dtype] = []
    reg = method.regularizers.prototype
    assert reg is not None
    handle = reg.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with runtime.autocast():
        out = method.training_step(views, 0.04)
    handle.remove()
    assert torch.isfinite(out.loss)
    assert seen == [torch.float32]
    # bf16 keeps 8 bits of mantissa: the cross-entropy agrees to about 1%.
    assert out.terms["cross_entropy"] == pytest.approx(reference.terms["cross_entropy"], rel=0.02)
    runtime.backward(out.loss)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in method.student.parameters())


def test_fp16_on_cpu_and_missing_cuda_are_user_errors() -> None:
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        Runtime(RuntimeConfig(device="cpu", precision="fp16"))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA device"):
            Runtime(RuntimeConfig(device="cuda"))
    with pytest.raises(UserError, match="runtime.precision"):
        load_config("dino", overrides=["runtime.precision=fp8"])


def test_compile_in_place_keeps_checkpoint_keys() -> None:
    torch.manual_seed(0)
    method = build_method(load_config("dino", overrides=TINY))
    keys = list(method.state_dict())
    Runtime(RuntimeConfig(device="cpu", compile=True)).prepare(method)
    assert list(method.state_dict()) == keys
    assert method.student.backbone._compiled_call_impl is not None  # type: ignore[attr-defined]


def test_channels_last_gives_the_same_step() -> None:
    torch.manual_seed(0)
    cfg = load_config("dino", overrides=[*TINY, "model.backbone=resnet_tiny"])
    a = build_method(cfg)
    b = build_method(cfg)
    b.load_state_dict(a.state_dict())
    runtime = Runtime(RuntimeConfig(device="cpu", channels_last=True))
    runtime.prepare(b)
    conv = b.student.backbone.net.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    views = random_crops(batch=4, seed=0)
    out_a = a.training_step(views, 0.04)
    out_b = b.training_step(runtime.to_device(views), 0.04)
    assert out_b.terms["loss"] == pytest.approx(out_a.terms["loss"], rel=1e-5)
