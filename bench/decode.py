"""Decode throughput: PIL (the pipeline's decoder) vs torchvision.io (libjpeg-turbo) vs GPU nvjpeg.

    python -m bench.decode [--smoke]

Each decodes a JPEG and resizes it to 224×224, one thread, figures/s. Two sets: the shared data
set's figures (≤384 px) and the same figures re-encoded at 1024 px (closer to PMC originals).
nvjpeg runs only where CUDA exists (batched ``decode_jpeg(device="cuda")``).
"""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from bench.common import bench_parser, print_table, write_results
from xai_pipeline.job.decode import decode_image

SIZE = 224


def _jpegs(dataset: Path, count: int, side: int | None) -> list[bytes]:
    files = sorted(dataset.glob("*/*.jpg"))[:: max(1, len(sorted(dataset.glob("*/*.jpg"))) // count)][:count]
    if side is None:
        return [f.read_bytes() for f in files]
    out = []
    for f in files:
        buf = io.BytesIO()
        Image.open(f).convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def pil(datas: list[bytes]) -> None:
    for data in datas:
        decode_image(data, SIZE)


def torchvision_cpu(datas: list[bytes]) -> None:
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2.functional import resize

    for data in datas:
        image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        resize(image, [SIZE, SIZE], antialias=True)


def nvjpeg(datas: list[bytes], batch: int = 64) -> None:
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2.functional import resize

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    for start in range(0, len(tensors), batch):
        images = decode_jpeg(tensors[start:start + batch], mode=ImageReadMode.RGB, device="cuda")
        torch.stack([resize(im, [SIZE, SIZE], antialias=True) for im in images])
    torch.cuda.synchronize()


def rate(fn, datas: list[bytes]) -> float:  # type: ignore[no-untyped-def]
    fn(datas[: min(8, len(datas))])  # warm-up
    started = time.perf_counter()
    fn(datas)
    return len(datas) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, dataset=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    count = 16 if args.smoke else 300
    results = []
    for label, side in (("dataset (<=384 px)", None), ("1024 px", 1024)):
        datas = _jpegs(Path(args.dataset), count, side)
        row = {"set": label, "figures": len(datas), "pil": rate(pil, datas), "torchvision_cpu": rate(torchvision_cpu, datas)}
        row["nvjpeg"] = rate(nvjpeg, datas) if torch.cuda.is_available() else None
        results.append(row)
    print_table(["set", "figures", "PIL fig/s", "torchvision fig/s", "nvjpeg fig/s"],
                [[r["set"], r["figures"], r["pil"], r["torchvision_cpu"], r["nvjpeg"] if r["nvjpeg"] else "n/a (no GPU)"] for r in results])
    write_results("decode", args.smoke, {"results": results, "threads": 1})
    return 0


if __name__ == "__main__":
    sys.exit(main())
