"""Builders of test inputs: image bytes in many formats, and small models."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from xai_pipeline.model.net import ModalityNet, ModelSpec, save_model


def image_bytes(image: Image.Image, fmt: str, **save_args: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save_args)
    return buf.getvalue()


def gradient(width: int = 64, height: int = 48, mode: str = "RGB") -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :].repeat(height, axis=0)
    rgb = np.stack([x, x[::-1], np.full_like(x, 128)], axis=2).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def tiny_model_file(path: Path, class_names: tuple[str, ...] = ("chest_xray", "ct", "mri"), size: int = 64, seed: int = 0,
                    head: str = "linear", version: str = "test", figure_types: tuple[str, ...] = ()) -> Path:
    import torch

    torch.manual_seed(seed)
    model = ModalityNet(ModelSpec(name="tiny-test", architecture="tiny_cnn", class_names=class_names, version=version, input_size=size, head=head,
                                  figure_types=figure_types))
    save_model(model, path)
    return path


def one_row_table(tmp_path: Path) -> Path:
    """A Delta table with one ok row at ``tmp_path/t``, written by deltalake alone (no Ray, no torch)."""
    import datetime as dt

    import pyarrow as pa
    from deltalake import write_deltalake

    from xai_pipeline import schema

    row = {f.name: None for f in schema.TABLE_SCHEMA}
    row.update({schema.FIGURE_ID: "0" * 64, schema.SOURCE_URI: "s3://b/a.png", schema.STATUS: "ok", schema.MODALITY: "ct",
                schema.CONFIDENCE: 0.9, schema.RUN_ID: "r", schema.PROCESSED_AT: dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
                schema.SCHEMA_VERSION_COL: schema.SCHEMA_VERSION})
    write_deltalake(str(tmp_path / "t"), pa.Table.from_pylist([row], schema=schema.TABLE_SCHEMA))
    return tmp_path / "t"
