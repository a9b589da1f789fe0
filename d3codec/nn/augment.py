"""Differentiable siamese augmentation (DSA; Zhao & Bilen, ICML 2021, Sec. 3 and their code).

Each call picks one transformation family at random (the code's default "S" mode) from
colour, crop, cutout, flip, scale, rotate, and draws its parameters. *Siamese* use draws one
parameter set and applies it to both the real and the synthetic batch, whatever their sizes,
which is why this is written here on torch ops rather than with kornia, whose parameter sets are
drawn per batch element and tied to one batch size. Every operation is differentiable in the
images, so gradients reach synthetic pixels.

Ratios are the DSA code's: scale 1.2, rotate 15°, crop (translation) 0.125, cutout 0.5,
brightness 1.0, saturation 2.0, contrast 0.5.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


class DSA:
    """Draws and applies DSA transformations to (N, C, H, W) float32 batches.

    Usage: ``params = dsa.sample(generator)`` then ``dsa.apply(real, params)`` and
    ``dsa.apply(synthetic, params)``: the same transformation for both (siamese). With
    ``per_sample=True`` each image gets its own parameters (for student training).
    """

    def __init__(
        self,
        strategy: str = DEFAULT_STRATEGY,
        scale: float = 1.2,
        rotate_degrees: float = 15.0,
        crop: float = 0.125,
        cutout: float = 0.5,
        brightness: float = 1.0,
        saturation: float = 2.0,
        contrast: float = 0.5,
    ):
        self.families = strategy.split("_")
        unknown = set(self.families) - {"color", "crop", "cutout", "flip", "scale", "rotate"}
        if unknown:
            raise ValueError(f"unknown DSA transformation(s) {sorted(unknown)}")
        self.scale, self.rotate, self.crop, self.cutout = scale, rotate_degrees, crop, cutout
        self.brightness, self.saturation, self.contrast = brightness, saturation, contrast

    def sample(self, generator: torch.Generator, n: int = 1) -> dict:
        """Draw one transformation: its family and ``n`` parameter rows (n=1: shared by a whole batch)."""
        family = self.families[int(torch.randint(len(self.families), (1,), generator=generator))]
        u = lambda *shape: torch.rand(n, *shape, generator=generator)  # noqa: E731
        if family == "color":
            return {"family": family, "brightness": u(), "saturation": u(), "contrast": u()}
        if family in ("crop", "cutout", "flip", "scale", "rotate"):
            return {"family": family, "u": u(2)}
        raise AssertionError(family)

    def apply(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """Apply drawn ``params`` to x (N, C, H, W); rows broadcast when there is one. Returns same shape."""
        family, n = params["family"], x.shape[0]

        def rows(t: torch.Tensor) -> torch.Tensor:  # (1 or N, ...) on x's device, expanded to N rows
            t = t.to(x.device, x.dtype)
            return t.expand(n, *t.shape[1:]) if t.shape[0] == 1 else t

        if family == "color":
            b = (rows(params["brightness"]) - 0.5) * self.brightness  # (N, 1)
            x = x + b.view(n, 1, 1, 1)
            s = rows(params["saturation"]) * self.saturation
            m = x.mean(dim=1, keepdim=True)
            x = (x - m) * s.view(n, 1, 1, 1) + m
            c = rows(params["contrast"]) + self.contrast
            m = x.mean(dim=(1, 2, 3), keepdim=True)
            return (x - m) * c.view(n, 1, 1, 1) + m
        u = rows(params["u"])  # (N, 2) uniform in [0, 1)
        if family == "flip":
            flip = (u[:, 0] < 0.5).view(n, 1, 1, 1)
            return torch.where(flip, x.flip(3), x)
        if family == "cutout":
            h, w = x.shape[2:]
            ch, cw = int(h * self.cutout + 0.5), int(w * self.cutout + 0.5)
            cy = (u[:, 0] * (h + 1 - ch % 2)).long().view(n, 1, 1)  # centre, as the DSA code draws it
            cx = (u[:, 1] * (w + 1 - cw % 2)).long().view(n, 1, 1)
            ys = torch.arange(h, device=x.device).view(1, h, 1)
            xs = torch.arange(w, device=x.device).view(1, 1, w)
            top, left = cy - ch // 2, cx - cw // 2
            inside = (ys >= top) & (ys < top + ch) & (xs >= left) & (xs < left + cw)  # (N, H, W)
            return x * (~inside).unsqueeze(1).to(x.dtype)
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        if family == "scale":
            scale = 1 / self.scale + u * (self.scale - 1 / self.scale)  # (N, 2) in [1/r, r)
            theta[:, 0, 0], theta[:, 1, 1] = scale[:, 0], scale[:, 1]
        elif family == "rotate":
            angle = (u[:, 0] - 0.5) * 2 * self.rotate / 180 * math.pi
            theta[:, 0, 0], theta[:, 0, 1] = torch.cos(angle), torch.sin(-angle)
            theta[:, 1, 0], theta[:, 1, 1] = torch.sin(angle), torch.cos(angle)
        elif family == "crop":  # translation by whole pixels, zero padding, as the DSA code does
            h, w = x.shape[2:]
            shift = ((u - 0.5) * 2 * self.crop * torch.tensor([w, h], device=x.device)).round()
            theta[:, 0, 0] = theta[:, 1, 1] = 1
            theta[:, 0, 2] = shift[:, 0] * 2 / max(w - 1, 1)
            theta[:, 1, 2] = shift[:, 1] * 2 / max(h - 1, 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        mode = "nearest" if family == "crop" else "bilinear"
        return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=True)
