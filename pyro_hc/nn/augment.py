"""Per-image random augmentations of a whole batch on its own device (no host round trip).

torchvision's transforms draw one parameter set per call, so a batch tensor would get one transform
for every image; contrastive and invariance losses need every image to get its own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AUGMENTATIONS", "BatchAugment", "random_affine", "affine_images"]

#: the kinds :class:`BatchAugment` knows
AUGMENTATIONS = ("simclr", "digits", "affine", "none")


def random_affine(
    images: torch.Tensor,
    degrees: float = 15.0,
    shear: float = 15.0,
    translate: float = 2.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A random affine transform per image, batched on the images' device (no host round trip).

    Each image ``N x C x H x W`` gets its own parameters, drawn as
    ``torchvision.transforms.v2.RandomAffine(degrees, translate=(translate/W, translate/H),
    shear=shear)`` draws them: a rotation angle and an x-shear uniform in ``[-degrees, degrees]``
    and ``[-shear, shear]``, and a shift of ``round(U(-translate, translate))`` whole pixels along
    each axis. The warp is torchvision's ``affine`` (the same inverse matrix and sampling grid) with
    bilinear interpolation and zero fill, for all images in one ``grid_sample`` call; torchvision's
    own transform draws one parameter set per call, so it would give every image of a batch the
    same transform.
    """
    if images.dim() != 4:
        raise ValueError(f"random_affine needs images N x C x H x W, got shape {tuple(images.shape)}")
    n, dtype, device = images.shape[0], images.dtype, images.device

    def uniform(bound: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator, device=device, dtype=dtype) * 2 - 1) * bound

    angle = torch.deg2rad(uniform(degrees))
    shear_x = torch.deg2rad(uniform(shear))
    tx, ty = torch.round(uniform(translate)), torch.round(uniform(translate))
    return affine_images(images, angle, shear_x, tx, ty)


def affine_images(images: torch.Tensor, angle: torch.Tensor, shear_x: torch.Tensor, tx: torch.Tensor,
                  ty: torch.Tensor) -> torch.Tensor:
    """torchvision's ``affine(image, angle, [tx, ty], scale=1, shear=[shear_x, 0])`` per image.

    Angles in radians, one value per image. The inverse matrix is torchvision's
    ``_get_inverse_affine_matrix`` about the image center, vectorised over the batch.
    """
    n, _, height, width = images.shape
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear_x)
    a, c = cos, sin  # rotation-shear matrix [[a, b], [c, d]] (shear_y = 0)
    b = -(a * tan + sin)
    d = cos - c * tan
    m0, m1, m3, m4 = d, -b, -c, a  # its inverse (det = 1)
    theta = torch.stack([
        torch.stack([m0, m1, -(m0 * tx + m1 * ty)], -1),
        torch.stack([m3, m4, -(m3 * tx + m4 * ty)], -1),
    ], 1)  # N x 2 x 3
    xs = torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, width, device=images.device, dtype=images.dtype)
    ys = torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, height, device=images.device,
                        dtype=images.dtype)
    base = torch.stack([xs.expand(height, width), ys[:, None].expand(height, width),
                        torch.ones(height, width, device=images.device, dtype=images.dtype)], -1)
    grid = base.reshape(1, -1, 3) @ theta.transpose(1, 2)  # N x HW x 2, in pixels from the center
    grid = torch.stack([grid[..., 0] / (0.5 * width), grid[..., 1] / (0.5 * height)], -1)  # no host tensor
    return F.grid_sample(images, grid.reshape(n, height, width, 2), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


class BatchAugment(nn.Module):
    """Random views of a whole batch on its own device, every image with its own random parameters.

    ``torchvision.transforms.v2`` draws one set of parameters per call, so a batch tensor would get
    the same crop and colour change for every image; contrastive learning needs each view to differ.
    Here the geometric part is one per-image affine map applied by ``F.affine_grid`` /
    ``F.grid_sample`` (bilinear, zero padding), the photometric part per-image factors broadcast over
    the batch, and the grey conversion is torchvision's ``v2.functional.rgb_to_grayscale``.

    ``kind="simclr"`` (SimCLR's set, Chen et al. 2020, as used by CC and CoHiClust for colour
    images): random resized crop (area ``crop_scale``, aspect ratio 3/4–4/3), horizontal flip
    (p = ½), colour jitter (brightness, contrast, saturation 0.4, hue 0.1; p = 0.8, applied in that
    fixed order; the hue shift is a rotation of the chroma plane in YIQ space) and grey scale
    (p = 0.2). One-channel images get the crop, flip, brightness and contrast only.

    ``kind="digits"``: random resized crop (area ``crop_scale``) composed with a rotation of up to
    ``rotation`` degrees and a shear of up to ``shear``; no flip (digits are not mirror-symmetric)
    and no colour change.

    ``kind="affine"``: DeepECT + Aug's warp (Mautz et al. 2020, Sec. 2.8): :func:`random_affine` with
    a rotation of up to ``rotation`` degrees, an x-shear of up to ``shear_angle`` degrees and a shift
    of up to ``translate`` whole pixels; no crop, no flip, no colour change.

    ``kind="none"``: the identity (two "views" are the same image).

    Every kind draws from the global torch generator, so ``torch.manual_seed`` reproduces a view.
    """

    def __init__(self, kind: str, crop_scale: tuple[float, float] = (0.08, 1.0), rotation: float = 15.0,
                 shear: float = 0.15, shear_angle: float = 15.0, translate: float = 2.0) -> None:
        super().__init__()
        if kind not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {kind!r}; choose one of {AUGMENTATIONS}")
        low, high = (float(s) for s in crop_scale)
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
        for name, value in (("rotation", rotation), ("shear", shear), ("shear_angle", shear_angle),
                            ("translate", translate)):
            if float(value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.kind = kind
        self.crop_scale = (low, high)
        self.rotation = float(rotation)
        self.shear = float(shear)
        self.shear_angle = float(shear_angle)
        self.translate = float(translate)
        # RGB <-> YIQ for the hue shift, kept on the module's device (no host copy inside a step)
        to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
        self.register_buffer("to_yiq", to_yiq, persistent=False)
        self.register_buffer("from_yiq", torch.linalg.inv(to_yiq), persistent=False)

    def extra_repr(self) -> str:
        if self.kind == "affine":
            return (f"kind='affine', rotation={self.rotation}, shear_angle={self.shear_angle}, "
                    f"translate={self.translate}")
        return f"kind={self.kind!r}, crop_scale={self.crop_scale}, rotation={self.rotation}, shear={self.shear}"

    @staticmethod
    def _uniform(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
        return torch.empty(n, device=like.device, dtype=like.dtype).uniform_(low, high)

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        scale = self._uniform(n, *self.crop_scale, x)
        log_ratio = self._uniform(n, math.log(3 / 4), math.log(4 / 3), x)
        width = torch.sqrt(scale * log_ratio.exp()).clamp(max=1.0)  # crop size as a fraction of the side
        height = torch.sqrt(scale / log_ratio.exp()).clamp(max=1.0)
        shift_x = self._uniform(n, -1.0, 1.0, x) * (1 - width)  # the crop stays inside the image
        shift_y = self._uniform(n, -1.0, 1.0, x) * (1 - height)
        linear = torch.diag_embed(torch.stack([width, height], -1))  # output -> input coordinates
        if self.kind == "simclr":
            flip = torch.where(torch.rand(n, device=x.device) < 0.5, -1.0, 1.0).to(x.dtype)
            linear = linear * torch.stack([flip, torch.ones_like(flip)], -1).unsqueeze(-2)
        else:  # digits: rotation and shear inside the crop
            angle = self._uniform(n, -self.rotation, self.rotation, x) * (math.pi / 180)
            cos, sin = angle.cos(), angle.sin()
            rotate = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
            shear = torch.zeros_like(rotate)
            shear[:, 0, 0] = shear[:, 1, 1] = 1.0
            shear[:, 0, 1] = self._uniform(n, -self.shear, self.shear, x)
            linear = linear @ rotate @ shear
        theta = torch.cat([linear, torch.stack([shift_x, shift_y], -1).unsqueeze(-1)], -1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _colour(self, x: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2.functional import rgb_to_grayscale

        n, channels = x.shape[0], x.shape[1]
        jitter = torch.rand(n, device=x.device) < 0.8

        def factor(low: float, high: float) -> torch.Tensor:
            value = self._uniform(n, low, high, x)
            return torch.where(jitter, value, torch.ones_like(value)).view(n, 1, 1, 1)

        def grey(images: torch.Tensor) -> torch.Tensor:
            return rgb_to_grayscale(images) if channels == 3 else images

        x = (x * factor(0.6, 1.4)).clamp(0, 1)  # brightness
        mean = grey(x).mean((1, 2, 3), keepdim=True)
        x = ((x - mean) * factor(0.6, 1.4) + mean).clamp(0, 1)  # contrast
        if channels == 3:
            g = grey(x)
            x = ((x - g) * factor(0.6, 1.4) + g).clamp(0, 1)  # saturation
            hue = factor(-0.1, 0.1).view(n) * (2 * math.pi)
            x = self._rotate_hue(x, torch.where(jitter, hue, torch.zeros_like(hue)))
            to_grey = (torch.rand(n, device=x.device) < 0.2).view(n, 1, 1, 1)
            x = torch.where(to_grey, grey(x).expand_as(x), x)
        return x

    def _rotate_hue(self, x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        """Rotate the chroma (I, Q) plane of YIQ by ``angle`` radians per image; luma is kept."""
        cos, sin = angle.cos(), angle.sin()
        one, zero = torch.ones_like(cos), torch.zeros_like(cos)
        rotate = torch.stack([torch.stack([one, zero, zero], -1), torch.stack([zero, cos, -sin], -1),
                              torch.stack([zero, sin, cos], -1)], -2)  # n x 3 x 3
        matrix = self.from_yiq @ rotate @ self.to_yiq
        return torch.einsum("nij,njhw->nihw", matrix, x).clamp(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return x
        if self.kind == "affine":
            return random_affine(x, self.rotation, self.shear_angle, self.translate)
        x = self._geometry(x)
        if self.kind == "simclr":
            x = self._colour(x)
        return x
