"""Where a network looked: Grad-CAM (Selvaraju et al. 2017) heat maps of the evidence for a class.

The map is taken at the output of the network's last stage (`layer4` of the ImageNet ResNets,
the last of `forward_stages`): each of its channels is weighted by the mean gradient of the
class's logit over the map, the weighted sum is clipped at zero, resized bilinearly to the
image, and scaled so that its peak is 1.

Written on two PyTorch hooks rather than with captum's LayerGradCam: the method is a forward
hook, one autograd call and a weighted sum (about 30 lines here), while captum would be a new
dependency, with its own release cycle, for one function of it.
"""

from __future__ import annotations

import io
import threading
from typing import Any

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from resnets.errors import UsageError

OVERLAY_SIDE = 224  # pixels of each panel of an overlay picture (small images are enlarged)
OVERLAY_ALPHA = 0.45  # weight of the heat map over the image


def last_stage(model: nn.Module) -> nn.Module:
    """The module whose output Grad-CAM weighs: the network's last residual stage."""
    names = getattr(model, "stage_names", None)
    if not names:
        raise UsageError(f"{type(model).__name__} has no residual stages to explain")
    stage: nn.Module = getattr(model, names[-1])
    return stage


def grad_cam(
    model: nn.Module,
    x: torch.Tensor,
    classes: torch.Tensor | None = None,
    size: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps (N, H, W) in [0, 1], at `size` (default: the input's), for `classes`
    (N,) or, when None, each image's predicted class; and the logits (N, classes), detached.

    A map is all zeros when no part of the last stage's output argues for the class.
    """
    captured: list[torch.Tensor] = []
    caller = threading.get_ident()  # another thread's forward pass (a server's) is not ours

    def capture(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        if threading.get_ident() == caller:
            captured.append(output)

    hook = last_stage(model).register_forward_hook(capture)
    try:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)  # so the maps have a gradient if weights do not
            logits = model(x).float()
            if classes is None:
                classes = logits.argmax(1)
            chosen = logits.gather(1, classes.view(-1, 1).to(logits.device)).sum()
            (features,) = captured
            (gradient,) = torch.autograd.grad(chosen, features)
    finally:
        hook.remove()
    weights = gradient.float().mean((2, 3), keepdim=True)
    maps = (weights * features.detach().float()).sum(1, keepdim=True).clamp(min=0)
    maps = F.interpolate(maps, size=size or x.shape[-2:], mode="bilinear")[:, 0]
    peak = maps.amax((1, 2), keepdim=True)
    maps = torch.where(peak > 0, maps / peak.clamp(min=torch.finfo(maps.dtype).tiny), 0.0)
    return maps.clamp(0, 1), logits.detach()


def overlay(pixels: Any, heat: Any, side: int = OVERLAY_SIDE) -> Image.Image:
    """The image (uint8 (C, H, W), C 1 or 3) beside itself with the heat map (H, W, in [0, 1])
    laid over it in the 'jet' colours, each panel `side` pixels square at least."""
    image, blended = _panels(pixels, heat, side)
    picture = Image.new("RGB", (2 * image.width + 4, image.height), "white")
    picture.paste(image, (0, 0))
    picture.paste(blended, (image.width + 4, 0))
    return picture


def heat_overlay(pixels: Any, heat: Any, side: int = OVERLAY_SIDE) -> Image.Image:
    """The right panel of `overlay` alone: the image with the heat map laid over it, enlarged
    by a whole factor to `side` pixels at least (what a page lays over its own preview)."""
    return _panels(pixels, heat, side)[1]


def _panels(pixels: Any, heat: Any, side: int) -> tuple[Image.Image, Image.Image]:
    """The image enlarged (nearest neighbour), and the same with the heat map blended in."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    rgb = np.repeat(pixels, 3, axis=0) if pixels.shape[0] == 1 else pixels
    image = Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0)), "RGB")
    height, width = image.height, image.width
    scale = max(1, -(-side // max(height, width)))
    size = (width * scale, height * scale)
    image = image.resize(size, Image.Resampling.NEAREST)
    heat_image = Image.fromarray((np.asarray(heat, dtype=np.float32) * 255).astype(np.uint8))
    heat = np.asarray(heat_image.resize(size, Image.Resampling.BILINEAR), np.float32) / 255
    colours = (matplotlib.colormaps["jet"](heat)[..., :3] * 255).astype(np.uint8)
    return image, Image.blend(image, Image.fromarray(colours, "RGB"), OVERLAY_ALPHA)


def png_bytes(picture: Image.Image) -> bytes:
    """A Pillow image as PNG file contents (for a file, or base64 in JSON)."""
    buffer = io.BytesIO()
    picture.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()
