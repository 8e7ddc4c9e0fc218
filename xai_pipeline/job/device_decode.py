"""JPEG decoding on the classifier's device: nvjpeg on a GPU, libjpeg-turbo on the CPU.

With ``--jpeg-decoder classifier`` the decode stage reads only the header of a plain JPEG (RGB or
grayscale, no EXIF rotation, a complete stream, within the limits; see
:func:`xai_pipeline.job.decode.probe_plain_jpeg`) and passes its bytes on. The classifier actor then
decodes those figures in one batched call on its own device and resizes each there:

    pixels = round(clamp(bilinear_antialiased(decode(bytes), S × S), 0, 255))  ∈ uint8^{3×S×S}

the whole figure, aspect ratio not kept, as the CPU path's PIL resize does (the two differ by
rounding and by PIL's DCT-domain draft scaling of large JPEGs). A figure the device decoder
rejects is reported in ``failed`` and decoded again with PIL by the caller, so it gets exactly the
status and message it would have had on the CPU path. No Ray, no boto3.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DeviceDecoded:
    """``pixels``: ``N×3×S×S`` uint8 on the device (zero where failed); ``failed``: indices into
    the input that the device decoder rejected."""

    pixels: torch.Tensor
    failed: list[int]


def _decode(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Batched decode; when the batch call fails (it returns nothing then), one call per figure
    finds the bad ones."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 marks its image decoders deprecated
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            pass
        images: list[torch.Tensor | None] = []
        for tensor in tensors:
            try:
                images.append(decode_jpeg([tensor], mode=ImageReadMode.RGB, device=device)[0])
            except RuntimeError:
                images.append(None)
        return images


def resize_uint8(image: torch.Tensor, size: int) -> torch.Tensor:
    """``3×H×W`` uint8 → ``3×S×S`` uint8, bilinear with antialiasing, on the image's device."""
    if image.shape[-2:] == (size, size):
        return image
    resized = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized[0].round_().clamp_(0, 255).to(torch.uint8)


def decode_resize(datas: list[bytes], size: int, device: torch.device) -> DeviceDecoded:
    """Decode JPEG byte strings on ``device`` and resize each to ``size × size``."""
    pixels = torch.zeros((len(datas), 3, size, size), dtype=torch.uint8, device=device)
    if not datas:
        return DeviceDecoded(pixels, [])
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    failed = []
    for i, image in enumerate(_decode(tensors, device)):
        if image is None or image.ndim != 3 or image.shape[0] != 3:
            failed.append(i)
            continue
        pixels[i] = resize_uint8(image, size)
    return DeviceDecoded(pixels, failed)
