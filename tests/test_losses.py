from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from fas.convention import InputConvention
from fas.losses import LivenessLoss, distillation_loss, fourier_target, to_gray_255


def numpy_fourier_target(gray: np.ndarray, size: int) -> np.ndarray:
    """The formula of docs/architecture.md written plainly, resized with cv2 as Silent-Face does."""
    spectrum = np.fft.fftshift(np.fft.fft2(gray))
    log_magnitude = np.log(np.abs(spectrum) + 1)
    low, high = log_magnitude.min(), log_magnitude.max()
    scaled = (log_magnitude - low + 1) / (high - low + 1)
    return cv2.resize(scaled.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)


@pytest.mark.parametrize(("image_size", "out_size"), [(80, 10), (128, 16)])
def test_fourier_target_matches_numpy(image_size: int, out_size: int) -> None:
    rng = np.random.default_rng(0)
    gray = rng.uniform(0, 255, (4, image_size, image_size))
    ours = fourier_target(torch.from_numpy(gray), (out_size, out_size)).numpy()
    assert ours.shape == (4, 1, out_size, out_size)
    for i in range(4):
        np.testing.assert_allclose(ours[i, 0], numpy_fourier_target(gray[i], out_size), rtol=1e-4, atol=1e-5)
    assert ours.max() <= 1.0 + 1e-6 and ours.min() > 0


def test_gray_undoes_the_input_convention() -> None:
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    expected = 0.114 * bgr[..., 0] + 0.587 * bgr[..., 1] + 0.299 * bgr[..., 2]
    rgb = torch.from_numpy(bgr[..., ::-1].copy()).permute(2, 0, 1)[None].float()
    suri = InputConvention(color_order="rgb", pixel_scale=1 / 255)
    silentface = InputConvention(color_order="bgr", pixel_scale=1.0)
    imagenet = InputConvention(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    normalized = (rgb / 255 - torch.tensor(imagenet.mean).view(1, 3, 1, 1)) / torch.tensor(imagenet.std).view(
        1, 3, 1, 1
    )
    np.testing.assert_allclose(to_gray_255(rgb / 255, suri)[0].numpy(), expected, atol=1e-3)
    np.testing.assert_allclose(to_gray_255(rgb.flip(1), silentface)[0].numpy(), expected, atol=1e-3)
    np.testing.assert_allclose(to_gray_255(normalized, imagenet)[0].numpy(), expected, atol=1e-3)


def test_combined_loss_weights_the_two_terms() -> None:
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.5]])
    targets = torch.tensor([0, 1])
    ft_map, ft_target = torch.full((2, 1, 4, 4), 0.5), torch.full((2, 1, 4, 4), 0.25)
    ce = torch.nn.functional.cross_entropy(logits, targets)
    losses = LivenessLoss(ft_weight=0.3)(logits, targets, ft_map, ft_target)
    assert losses["loss_ft"].item() == pytest.approx(0.0625)
    assert losses["loss"].item() == pytest.approx(0.7 * ce.item() + 0.3 * 0.0625)


def test_zero_ft_weight_ignores_the_head() -> None:
    logits = torch.tensor([[1.0, 0.0]])
    losses = LivenessLoss(ft_weight=0.0)(logits, torch.tensor([0]), torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert set(losses) == {"loss", "loss_ce"}
    with pytest.raises(ValueError, match="ft_weight"):
        LivenessLoss(ft_weight=1.5)


def test_distillation_loss_is_the_temperature_scaled_kl_divergence() -> None:
    """Teacher softmax (0.75, 0.25), student (0.5, 0.5): KL = 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812."""
    student, teacher = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]])
    assert distillation_loss(student, teacher, 1.0).item() == pytest.approx(0.130812, abs=1e-6)
    # At T = 2 the logits are halved: teacher (2 ln 3, 0) gives the same softmax, and T^2 scales the loss by 4.
    assert distillation_loss(student, 2 * teacher, 2.0).item() == pytest.approx(4 * 0.130812, abs=1e-5)
    batch = torch.tensor([[1.0, -2.0], [0.3, 0.1]])
    assert distillation_loss(batch, batch.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_the_fourier_target_stays_float32_under_bf16_autocast() -> None:
    """trainer.precision=bf16-mixed must not change the target (einsum under autocast shifted it by 0.1)."""
    convention = InputConvention(input_size=64)
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected = fourier_target(to_gray_255(images, convention), (8, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        target = fourier_target(to_gray_255(images, convention), (8, 8))
    assert target.dtype == torch.float32
    torch.testing.assert_close(target, expected, rtol=0, atol=1e-6)
