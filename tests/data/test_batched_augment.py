"""Batched multi-crop augmentation and the fast standard pipeline.

What can fail here:

* the counter-based generator: range, moments, determinism, streams that do not collide;
* the crop parameters: torchvision's box distribution (whole pixels, area in ``scale``,
  aspect ratio in [3/4, 4/3] up to rounding, compared with ``RandomResizedCrop.get_params``
  on an 8x8 image), and the rate of every random choice against its probability with a
  4.5-sigma binomial tolerance;
* every pixel operation against an independent reference written here from its formula
  (PIL's own bicubic resize on float images, colorsys for the hue, a numpy convolution for
  the blur);
* the whole pipeline against the standard one on the same images: per image and channel,
  the crops' mean, mean square and within-crop std agree within 4 standard errors
  (paired z-test), and a pipeline with other crop scales fails the same test;
* determinism (same seeds, same crops, whatever the batch around the image) and an exact
  resume of a training run that uses it;
* the standard pipeline's fast path: bit-identical to the torchvision transforms it
  replaces, the blur excepted, and PIL's blur radius really is sigma.
"""

from __future__ import annotations

import colorsys
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from protossl.config import DataConfig, load_config
from protossl.core.errors import UserError
from protossl.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BatchedAugmentation,
    BatchedMultiCrop,
    MultiCropTransform,
    StandardAugmentation,
    build_train_augmentation,
    load_dataset,
)
from protossl.data.batched_augment import (
    ViewSpec,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    collate_images,
    counter_uniforms,
    gaussian_blur,
    image_to_uint8,
    resample_matrices,
    sample_crop_parameters,
)


def _binomial_ok(hits: int, n: int, p: float, sigmas: float = 4.5) -> bool:
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1e-9


def _smooth_images(count: int, seed: int = 0) -> list[Image.Image]:
    # Colourful, smooth images of varied sizes (20-32 px a side), so that jitter, hue and
    # the batch padding all matter.
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        height, width = (int(v) for v in rng.integers(20, 33, 2))
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        images.append(Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR))
    return images


def _batch(images: list[Image.Image], first_seed: int = 1000):
    items = [(image_to_uint8(im), first_seed + i, 0) for i, im in enumerate(images)]
    return collate_images(items)


# ------------------------------------------------------------------------ randomness


def test_counter_uniforms_range_moments_and_determinism() -> None:
    u = counter_uniforms(np.arange(5000), stream=3, count=40)
    assert u.shape == (5000, 40) and (u >= 0).all() and (u < 1).all()
    assert abs(u.mean() - 0.5) < 0.002 and abs(u.var() - 1 / 12) < 0.001
    # Neighbouring slots and neighbouring seeds are uncorrelated.
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.05
    assert abs(np.corrcoef(u[:-1, 0], u[1:, 0])[0, 1]) < 0.05
    assert np.array_equal(u, counter_uniforms(np.arange(5000), 3, 40))
    assert np.array_equal(u[7], counter_uniforms([7], 3, 40)[0])  # per seed, batch-free
    other = counter_uniforms(np.arange(5000), stream=4, count=40)
    assert not np.isin(u, other).any()  # streams never share draws
    assert not np.array_equal(counter_uniforms([-1], 0, 4), counter_uniforms([1], 0, 4))


# ------------------------------------------------------------------------ parameters

SIGMA = (0.1, 2.0)


@pytest.mark.parametrize(("height", "width"), [(600, 800), (32, 32), (20, 31)])
@pytest.mark.parametrize("scale", [(0.4, 1.0), (0.05, 0.4)])
def test_boxes_are_whole_pixels_inside_the_image_with_area_and_ratio_in_range(
    height: int, width: int, scale: tuple[float, float]
) -> None:
    n = 4000
    view = ViewSpec(16, scale, blur_p=0.5, solarize_p=0.0)
    p = sample_crop_parameters(np.arange(n), np.full(n, height), np.full(n, width), 0, view, SIGMA)
    left, top, right, bottom = p.box.T
    assert np.array_equal(p.box, np.round(p.box))
    assert (left >= 0).all() and (top >= 0).all()
    assert (right <= width).all() and (bottom <= height).all()
    w, h = right - left, bottom - top
    assert (w >= 1).all() and (h >= 1).all()
    # The sides are the rounded sqrt(area * ratio), sqrt(area / ratio) of one try: the
    # true area and ratio lie within half a pixel of each side.
    area = height * width
    fallback = (w == width) & (h == height)
    tried = ~fallback
    assert ((w[tried] + 0.5) * (h[tried] + 0.5) >= scale[0] * area - 1e-9).all()
    assert ((w[tried] - 0.5) * (h[tried] - 0.5) <= scale[1] * area + 1e-9).all()
    assert ((w[tried] + 0.5) / np.maximum(h[tried] - 0.5, 1e-9) >= 3 / 4 - 1e-9).all()
    assert ((w[tried] - 0.5) / (h[tried] + 0.5) <= 4 / 3 + 1e-9).all()


@pytest.mark.parametrize(("height", "width"), [(8, 8), (20, 31), (600, 800)])
@pytest.mark.parametrize("scale", [(0.4, 1.0), (0.05, 0.4)])
def test_box_distribution_matches_torchvision(
    height: int, width: int, scale: tuple[float, float]
) -> None:
    # Width, height, left and top of the boxes against RandomResizedCrop.get_params: same
    # mean (4 standard errors) and spread (5%). On 8x8 images (digits) the whole-pixel
    # rounding visibly shapes where crops fall; both must agree there too.
    n = 6000
    view = ViewSpec(16, scale, blur_p=0.5, solarize_p=0.0)
    p = sample_crop_parameters(np.arange(n), np.full(n, height), np.full(n, width), 1, view, SIGMA)
    left, top, right, bottom = p.box.T
    ours = np.stack([right - left, bottom - top, left, top], axis=1)
    torch.manual_seed(0)
    image = Image.new("RGB", (width, height))
    ref = np.array(
        [
            (w, h, j, i)
            for i, j, h, w in (
                T.RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3]) for _ in range(n)
            )
        ],
        dtype=np.float64,
    )
    for column in range(4):
        a, b = ours[:, column], ref[:, column]
        standard_error = math.sqrt(a.var() / n + b.var() / n)
        assert abs(a.mean() - b.mean()) < 4 * standard_error, column
        assert abs(a.std() - b.std()) < 0.05 * b.std() + 0.02, column


@pytest.mark.parametrize(("blur_p", "solarize_p"), [(1.0, 0.0), (0.1, 0.2), (0.5, 0.0)])
def test_random_choices_have_their_probabilities(blur_p: float, solarize_p: float) -> None:
    n = 20000
    view = ViewSpec(16, (0.4, 1.0), blur_p=blur_p, solarize_p=solarize_p)
    p = sample_crop_parameters(np.arange(n), np.full(n, 32), np.full(n, 32), 2, view, SIGMA)
    for flags, prob in [
        (p.flip, 0.5),
        (p.jitter, 0.8),
        (p.gray, 0.2),
        (p.blur, blur_p),
        (p.solarize, solarize_p),
    ]:
        assert _binomial_ok(int(flags.sum()), n, prob), (int(flags.sum()), prob)
    # Factors uniform in DINO's ranges: inside them, and mean in the middle.
    ranges = [(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]
    for k, (low, high) in enumerate(ranges):
        f = p.factors[:, k]
        assert (f >= low).all() and (f < high).all()
        assert abs(f.mean() - (low + high) / 2) < 4.5 * (high - low) / math.sqrt(12 * n)
    assert (p.sigma >= SIGMA[0]).all() and (p.sigma < SIGMA[1]).all()
    # Orders: every one of the 24 permutations, each about 1/24 of the time.
    assert all(sorted(row) == [0, 1, 2, 3] for row in p.order[:50].tolist())
    counts: dict[tuple[int, ...], int] = {}
    for row in map(tuple, p.order.tolist()):
        counts[row] = counts.get(row, 0) + 1
    assert len(counts) == 24
    assert all(_binomial_ok(c, n, 1 / 24) for c in counts.values())
    # Different choices of one crop are independent (flip vs gray, a 2x2 table).
    both = int((p.flip & p.gray).sum())
    assert _binomial_ok(both, n, 0.5 * 0.2)


def test_pipeline_uses_dinos_probabilities_per_view() -> None:
    aug = BatchedMultiCrop(32, num_local_crops=3)
    assert [(v.size, v.blur_p, v.solarize_p) for v in aug.views] == [
        (32, 1.0, 0.0),
        (32, 0.1, 0.2),
        (14, 0.5, 0.0),
        (14, 0.5, 0.0),
        (14, 0.5, 0.0),
    ]
    assert aug.views[0].scale == (0.4, 1.0) and aug.views[2].scale == (0.05, 0.4)
    assert aug.blur_sigma == pytest.approx((0.1 * 32 / 224, 2.0 * 32 / 224))
    params = aug.sample(np.arange(100), np.full((100, 2), 32))
    assert not np.array_equal(params[2].box, params[3].box)  # local crops differ


# ------------------------------------------------------------------------- pixel ops


@pytest.mark.parametrize(
    ("box", "out"),
    [((0, 0, 8, 8), 16), ((2, 1, 7, 5), 12), ((3, 0, 40, 30), 10), ((5, 5, 9, 9), 4)],
)
def test_resampling_equals_pil_crop_then_bicubic_resize(box: tuple, out: int) -> None:
    rng = np.random.default_rng(1)
    array = rng.random((30, 40)).astype(np.float32)
    ref = Image.fromarray(array, mode="F").crop(box).resize((out, out), Image.Resampling.BICUBIC)
    b = torch.tensor([box], dtype=torch.float32)
    rows = resample_matrices(b[:, 1], b[:, 3] - b[:, 1], torch.tensor([30]), out, 30)
    cols = resample_matrices(b[:, 0], b[:, 2] - b[:, 0], torch.tensor([40]), out, 40)
    ours = rows[0] @ torch.from_numpy(array) @ cols[0].T
    assert torch.allclose(ours, torch.from_numpy(np.array(ref)), atol=2e-5)
    # Padding beyond the image's own size gets no weight.
    padded = resample_matrices(b[:, 0], b[:, 2] - b[:, 0], torch.tensor([40]), out, 64)
    assert torch.equal(padded[0, :, 40:], torch.zeros(out, 24))
    assert torch.allclose(padded[0, :, :40], cols[0])


def test_brightness_contrast_saturation_follow_their_blend_formulas() -> None:
    torch.manual_seed(0)
    x = torch.rand(3, 3, 5, 4)
    f = torch.tensor([0.6, 1.0, 1.4])
    grey = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]  # [3, 5, 4]
    for i in range(3):
        fi = float(f[i])
        expected_b = (x[i] * fi).clamp(0, 1)
        mean = grey[i].mean()
        expected_c = (fi * x[i] + (1 - fi) * mean).clamp(0, 1)
        expected_s = (fi * x[i] + (1 - fi) * grey[i]).clamp(0, 1)
        assert torch.allclose(adjust_brightness(x, f)[i], expected_b, atol=1e-6)
        assert torch.allclose(adjust_contrast(x, f)[i], expected_c, atol=1e-6)
        assert torch.allclose(adjust_saturation(x, f)[i], expected_s, atol=1e-6)
    assert torch.equal(adjust_brightness(x, torch.ones(3)), x)


def test_hue_shift_matches_colorsys() -> None:
    rng = np.random.default_rng(2)
    pixels = rng.random((4, 3, 6, 6)).astype(np.float32)
    pixels[0, :, 0, 0] = (0.5, 0.5, 0.5)  # grey: hue undefined, must stay grey
    pixels[1, :, 0, 0] = (1.0, 0.0, 0.0)
    shifts = np.array([0.1, -0.1, 0.05, -0.03], dtype=np.float32)
    ours = adjust_hue(torch.from_numpy(pixels), torch.from_numpy(shifts)).numpy()
    for n, y, x in itertools.product(range(4), range(6), range(6)):
        h, s, v = colorsys.rgb_to_hsv(*pixels[n, :, y, x].tolist())
        expected = colorsys.hsv_to_rgb((h + float(shifts[n])) % 1.0, s, v)
        assert np.allclose(ours[n, :, y, x], expected, atol=1e-5), (n, y, x)


def test_blur_is_a_gaussian_convolution_with_replicated_edges() -> None:
    rng = np.random.default_rng(3)
    x = rng.random((2, 3, 9, 7)).astype(np.float32)
    sigma = np.array([0.7, 1.6], dtype=np.float32)
    radius = 3
    ours = gaussian_blur(torch.from_numpy(x), torch.from_numpy(sigma), radius).numpy()
    for n in range(2):
        taps = np.arange(-radius, radius + 1)
        k = np.exp(-0.5 * (taps / sigma[n]) ** 2)
        k /= k.sum()
        padded = np.pad(x[n], ((0, 0), (radius, radius), (radius, radius)), mode="edge")
        ref = np.zeros_like(x[n])
        for dy, dx in itertools.product(range(2 * radius + 1), repeat=2):
            ref += k[dy] * k[dx] * padded[:, dy : dy + 9, dx : dx + 7]
        assert np.allclose(ours[n], ref, atol=1e-5)


def test_pil_blur_radius_is_the_standard_deviation() -> None:
    # The standard pipeline passes sigma as PIL's radius: the blur of a step edge must be
    # the step convolved with a kernel of that standard deviation.
    for sigma in (1.0, 2.0, 3.0):
        step = np.zeros((8, 200), dtype=np.uint8)
        step[:, 100:] = 255
        blurred = np.asarray(
            Image.fromarray(step).filter(ImageFilter.GaussianBlur(radius=sigma)), np.float64
        )[4]
        kernel = np.diff(blurred) / 255.0  # the kernel, sampled between pixels
        centre = (kernel * np.arange(kernel.size)).sum() / kernel.sum()
        variance = (kernel * (np.arange(kernel.size) - centre) ** 2).sum() / kernel.sum()
        assert math.sqrt(variance) == pytest.approx(sigma, rel=0.08), sigma


def test_grayscale_and_solarize_in_the_pipeline() -> None:
    # A pipeline whose random draws are replaced so one step is on for every crop.
    aug = BatchedMultiCrop(8, num_local_crops=0, mean=(0, 0, 0), std=(1, 1, 1))
    x = torch.rand(6, 3, 8, 8)
    params = aug.sample(np.arange(6), np.full((6, 2), 8))

    def render(**overrides: object) -> torch.Tensor:
        p = params[0]
        fields = {name: getattr(p, name) for name in p.__dataclass_fields__}
        fields.update(
            box=np.tile([0.0, 0.0, 8.0, 8.0], (6, 1)),
            flip=np.zeros(6, bool),
            jitter=np.zeros(6, bool),
            gray=np.zeros(6, bool),
            blur=np.zeros(6, bool),
            solarize=np.zeros(6, bool),
        )
        fields.update(overrides)
        group = type(p)(**fields)
        return aug._render(x, np.full((6, 2), 8), group, 8, 1)

    assert torch.allclose(render(), x, atol=1e-6)  # full-image box, same size: identity
    assert torch.allclose(render(flip=np.ones(6, bool)), x.flip(-1), atol=1e-6)
    grey = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    gray_out = render(gray=np.ones(6, bool))
    for c in range(3):
        assert torch.allclose(gray_out[:, c], grey, atol=1e-6)
    solar = render(solarize=np.ones(6, bool))
    assert torch.allclose(solar, torch.where(x >= 128 / 255, 1 - x, x), atol=1e-6)


# ------------------------------------------------------------------ whole pipeline


def test_shapes_dtype_device_and_normalization_range() -> None:
    aug = BatchedMultiCrop(16, num_local_crops=3)
    images, sizes, seeds, _ = _batch(_smooth_images(5))
    crops = aug(images, seeds, sizes)
    assert [tuple(c.shape) for c in crops] == [(5, 3, 16, 16)] * 2 + [(5, 3, 7, 7)] * 3
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    low, high = (-mean / std).view(1, 3, 1, 1), ((1 - mean) / std).view(1, 3, 1, 1)
    for c in crops:
        assert c.dtype == torch.float32 and c.device == images.device
        assert torch.isfinite(c).all()
        assert (c >= low - 1e-5).all() and (c <= high + 1e-5).all()


def test_same_seeds_same_crops_whatever_the_batch_and_rng() -> None:
    aug = BatchedMultiCrop(16, num_local_crops=2)
    images, sizes, seeds, _ = _batch(_smooth_images(6))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = aug(images, seeds, sizes)
    assert torch.equal(torch.get_rng_state(), state)  # torch's generator untouched
    again = aug(images, seeds, sizes)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    # Image 4 alone, unpadded, in another batch: the same crops.
    alone = aug(images[4:5, :, : int(sizes[4, 0]), : int(sizes[4, 1])], seeds[4:5])
    reordered = aug(images[[4, 0]], seeds[[4, 0]], sizes[[4, 0]])
    for a, b, c in zip(first, alone, reordered, strict=True):
        assert torch.allclose(a[4], b[0], atol=1e-5)
        assert torch.allclose(a[4], c[0], atol=1e-5)
    other = aug(images, seeds + 1, sizes)
    assert all(not torch.equal(a, b) for a, b in zip(first, other, strict=True))
    # Float input in [0, 1] is the same as uint8 input.
    as_float = aug(images.float() / 255, seeds, sizes)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(first, as_float, strict=True))


def _crop_statistics(crops: torch.Tensor) -> torch.Tensor:
    # [copies, N, 3, h, w] -> [N, 9]: per image, the channel means, mean squares and
    # within-crop standard deviations, averaged over the copies of that crop.
    stats = [crops.mean((-1, -2)), (crops**2).mean((-1, -2)), crops.std((-1, -2))]
    return torch.cat([s.mean(0) for s in stats], dim=1)


def _paired_z(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = _crop_statistics(a) - _crop_statistics(b)
    return d.mean(0) / (d.std(0) / math.sqrt(d.shape[0]))


def test_output_statistics_match_the_standard_pipeline() -> None:
    # The same 600 images through both pipelines (independent random draws). For global
    # crop 1, global crop 2 and the local crops, per image and channel: the crop's mean,
    # mean square (with the mean: the overall std) and within-crop std. The per-image
    # differences average to zero within 4 standard errors (paired z-test, 27 of them; the
    # largest seen on three image sets was 2.6). A pipeline with other crop scales fails it.
    images = _smooth_images(600, seed=5)
    standard = MultiCropTransform(16, num_local_crops=2)
    batched = BatchedMultiCrop(16, num_local_crops=2)
    torch.manual_seed(0)
    per_image = [standard(im) for im in images]
    batch, sizes, seeds, _ = _batch(images)
    ours = batched(batch, seeds, sizes)
    for crops in ([0], [1], [2, 3]):
        a = torch.stack([torch.stack([v[c] for v in per_image]) for c in crops])
        b = torch.stack([ours[c] for c in crops])
        z = _paired_z(a, b)
        assert (z.abs() < 4).all(), (crops, z)
    # Power: global crops drawn from (0.1, 0.4) of the image instead of (0.4, 1.0).
    other = BatchedMultiCrop(16, num_local_crops=0, global_scale=(0.1, 0.4))
    wrong = torch.stack(other(batch, seeds, sizes)[:1])
    a = torch.stack([v[0] for v in per_image]).unsqueeze(0)
    assert _paired_z(a, wrong).abs().max() > 6


def test_collate_pads_and_records_sizes() -> None:
    a = torch.full((3, 4, 5), 7, dtype=torch.uint8)
    b = torch.full((3, 6, 2), 9, dtype=torch.uint8)
    images, sizes, seeds, labels = collate_images([(a, 11, 1), (b, 12, 0)])
    assert images.shape == (2, 3, 6, 5) and images.dtype == torch.uint8
    assert sizes.tolist() == [[4, 5], [6, 2]] and seeds.tolist() == [11, 12]
    assert labels.tolist() == [1, 0]
    assert torch.equal(images[0, :, :4, :5], a) and images[0, :, 4:].sum() == 0
    assert torch.equal(images[1, :, :, :2], b) and images[1, :, :, 2:].sum() == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        BatchedMultiCrop(2)
    with pytest.raises(ValueError):
        BatchedMultiCrop(16, local_scale=(0.5, 0.2))
    aug = BatchedMultiCrop(16, 1)
    with pytest.raises(ValueError, match="B, 3, H, W"):
        aug(torch.zeros(2, 1, 8, 8), [0, 1])
    with pytest.raises(ValueError, match="one seed"):
        aug(torch.zeros(2, 3, 8, 8), [0])


# ------------------------------------------------------------ standard fast path


class _PilBlur:
    """torchvision's GaussianBlur draw, then PIL's filter (the one deliberate change)."""

    def __init__(self, sigma: tuple[float, float]) -> None:
        self.sigma = sigma

    def __call__(self, img: Image.Image) -> Image.Image:
        sigma = torch.empty(1).uniform_(*self.sigma).item()
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))


def _torchvision_reference(transform: MultiCropTransform):
    bicubic = T.InterpolationMode.BICUBIC
    sigma = transform.blur_sigma
    jitter = T.Compose(
        [
            T.RandomHorizontalFlip(p=0.5),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ]
    )
    norm = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    size, local = transform.image_size, transform.local_size
    g1 = T.Compose(
        [
            T.RandomResizedCrop(size, (0.4, 1.0), interpolation=bicubic),
            jitter,
            T.RandomApply([_PilBlur(sigma)], p=1.0),
            norm,
        ]
    )
    g2 = T.Compose(
        [
            T.RandomResizedCrop(size, (0.4, 1.0), interpolation=bicubic),
            jitter,
            T.RandomApply([_PilBlur(sigma)], p=0.1),
            T.RandomSolarize(threshold=128, p=0.2),
            norm,
        ]
    )
    lc = T.Compose(
        [
            T.RandomResizedCrop(local, (0.05, 0.4), interpolation=bicubic),
            jitter,
            T.RandomApply([_PilBlur(sigma)], p=0.5),
            norm,
        ]
    )
    return lambda img: [g1(img), g2(img)] + [lc(img) for _ in range(transform.num_local_crops)]


@pytest.mark.parametrize("image_size", [16, 32])
def test_standard_fast_path_is_bit_identical_to_torchvision(image_size: int) -> None:
    transform = MultiCropTransform(image_size, num_local_crops=3)
    reference = _torchvision_reference(transform)
    for k, image in enumerate(_smooth_images(25, seed=9)):
        torch.manual_seed(k)
        ours = transform(image)
        torch.manual_seed(k)
        theirs = reference(image)
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True)), k


# ------------------------------------------------------------- config and trainer


def test_config_selects_the_pipeline_and_rejects_unknown_names() -> None:
    assert DataConfig().augmentation == "standard"
    assert isinstance(build_train_augmentation(DataConfig()), StandardAugmentation)
    batched = build_train_augmentation(DataConfig(augmentation="batched", image_size=32))
    assert isinstance(batched, BatchedAugmentation)
    assert batched.multicrop.image_size == 32 and batched.device == torch.device("cpu")
    with pytest.raises(UserError, match="standard.*batched"):
        load_config("dino", overrides=["data.augmentation=kornia"])
    with pytest.raises(UserError, match="standard, batched"):
        build_train_augmentation(DataConfig(augmentation="gpu"))


def test_both_pipelines_feed_the_same_loader_contract() -> None:
    for name in ("standard", "batched"):
        aug = build_train_augmentation(DataConfig(augmentation=name, num_local_crops=2))
        data = aug.dataset(load_dataset("digits", "test", transform=aug.transform))
        batch = aug.collate([data[(i, 100 + i)] for i in range(4)])
        crops = aug.crops(batch)
        assert [tuple(c.shape) for c in crops] == [(4, 3, 16, 16)] * 2 + [(4, 3, 7, 7)] * 2
        again = aug.crops(aug.collate([data[(i, 100 + i)] for i in range(4)]))
        assert all(torch.equal(a, b) for a, b in zip(crops, again, strict=True)), name


def test_trainer_resume_is_bit_exact_with_the_batched_pipeline(tmp_path: Path) -> None:
    from protossl.engine.trainer import Trainer

    overrides = [
        "data.augmentation=batched",
        "data.image_size=8",
        "data.spec=digits@lt=100",  # 354 training images keep the test cheap
        "data.batch_size=170",  # 2 steps per epoch
        "data.num_local_crops=1",
        "model.num_prototypes=16",
        "model.head_hidden_dim=16",
        "model.bottleneck_dim=8",
        "optim.epochs=2",
        "optim.warmup_epochs=1",
        "monitor.monitor_samples=16",
        "monitor.eval_knn=false",
    ]
    full, split = tmp_path / "full", tmp_path / "split"
    trainer = Trainer(load_config("dino", overrides=overrides), full, progress=False)
    assert isinstance(trainer.augmentation, BatchedAugmentation)
    trainer.fit()
    Trainer(load_config("dino", overrides=overrides), split, progress=False).fit(
        stop_after_epochs=1
    )
    Trainer(load_config("dino", overrides=overrides), split, resume=True, progress=False).fit()
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(split / "checkpoints" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for key, value in a["method"].items():
        assert torch.equal(value, b["method"][key]), key
