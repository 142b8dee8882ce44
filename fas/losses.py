"""The Fourier-transform (FT) auxiliary target and the combined classification + FT loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fas.convention import InputConvention

# ITU-R BT.601 luma weights, the ones cv2.COLOR_BGR2GRAY uses.
LUMA_RGB = (0.299, 0.587, 0.114)


def to_gray_255(images: Tensor, convention: InputConvention) -> Tensor:
    """Undo the input normalisation of an (N, 3, H, W) batch and return (N, H, W) luma in 0..255.

    The original computes the spectrum of the uint8 grayscale image, and log(1 + |F|) is not
    scale-invariant, so the target must see the same 0..255 range whatever the model's input scale.
    A weighted sum, not einsum: autocast would run einsum's matmul in bf16 and shift the target.
    """
    mean = images.new_tensor(convention.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = images.new_tensor(convention.std, dtype=torch.float32).view(1, 3, 1, 1)
    pixels = (images.float() * std + mean) / convention.pixel_scale
    weights = LUMA_RGB if convention.color_order == "rgb" else LUMA_RGB[::-1]
    return (pixels * pixels.new_tensor(weights).view(1, 3, 1, 1)).sum(dim=1)


def fourier_target(gray_255: Tensor, out_size: tuple[int, int]) -> Tensor:
    """Silent-Face's FT map, batched: log(1 + |fftshift(fft2(gray))|), min-max scaled, resized.

    The scaling is (x - min + 1) / (max - min + 1) per image, exactly as the original does (so
    values lie in (0, 1]); the resize is bilinear with half-pixel centres like `cv2.resize`.
    Returns (N, 1, *out_size).
    """
    spectrum = torch.fft.fftshift(torch.fft.fft2(gray_255.float()), dim=(-2, -1))
    log_magnitude = torch.log1p(spectrum.abs())
    flat = log_magnitude.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    high = flat.max(dim=1).values[:, None, None]
    scaled = (log_magnitude - low + 1) / (high - low + 1)
    return F.interpolate(scaled[:, None], size=out_size, mode="bilinear", align_corners=False, antialias=False)


class LivenessLoss(nn.Module):
    """loss = (1 - ft_weight) * cross-entropy + ft_weight * MSE(FT head, FT target).

    With `ft_weight == 0` the FT term is neither computed nor back-propagated.
    """

    def __init__(self, ft_weight: float = 0.5, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= ft_weight < 1.0:
            raise ValueError(f"ft_weight must be in [0, 1), got {ft_weight}; set model.ft_weight=0.5 for example.")
        self.ft_weight = ft_weight
        self.cross_entropy = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def forward(
        self, logits: Tensor, targets: Tensor, ft_map: Tensor | None = None, ft_target: Tensor | None = None
    ) -> dict[str, Tensor]:
        ce = self.cross_entropy(logits, targets)
        if self.ft_weight == 0 or ft_map is None or ft_target is None:
            return {"loss": ce, "loss_ce": ce}
        ft = F.mse_loss(ft_map, ft_target)
        return {"loss": (1 - self.ft_weight) * ce + self.ft_weight * ft, "loss_ce": ce, "loss_ft": ft}


def distillation_loss(logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), the batch mean (Hinton et al., 2015; Li & Hoiem,
    2016, "Learning without forgetting", use it to keep a fine-tuned model's outputs near the original's).
    T^2 keeps its gradients on the scale of cross-entropy's whatever the temperature."""
    student = F.log_softmax(logits.float() / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return temperature**2 * F.kl_div(student, teacher, log_target=True, reduction="batchmean")
