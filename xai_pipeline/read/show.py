"""``xai-pipeline show``: a figure with its CRM overlaid, its label and confidence; for a compound
figure, its panel boxes with their labels and each panel's CRM over its crop; with ``--compare``,
CRM beside CAM and Grad-CAM of the same model, computed on demand (not stored)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from xai_pipeline import schema
from xai_pipeline.job.codec import decode_map
from xai_pipeline.job.decode import DecodeLimits, open_rgb, to_pixels
from xai_pipeline.read.query import run_sql
from xai_pipeline.read.render import boxed, overlay, tile_grid
from xai_pipeline.job.fetch import read_object
from xai_pipeline.store.source import S3Settings, SourceError, parse_location

FIGURE_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Shown:
    path: Path
    modality: str
    confidence: float
    panels: tuple[str, ...]


def figure_row(table_uri: str, figure_id: str, settings: S3Settings) -> dict[str, object]:
    if not FIGURE_ID_PATTERN.match(figure_id):
        raise SourceError(f"FIGURE_ID must be 32 hex digits, got {figure_id!r}")
    rows = run_sql(table_uri, f"SELECT * FROM figures WHERE {schema.FIGURE_ID} = '{figure_id}'", settings=settings).to_pylist()
    if not rows:
        raise SourceError(f"--table {table_uri}: no figure {figure_id}")
    return rows[0]


def load_figure(source_uri: str, settings: S3Settings) -> Image.Image:
    location = parse_location(source_uri, "source_uri")
    fetched = read_object(location, location.path, settings)
    if fetched.status:
        raise SourceError(f"{source_uri}: {fetched.error}")
    opened = open_rgb(fetched.data, DecodeLimits())
    if opened.image is None:
        raise SourceError(f"{source_uri}: {opened.error}")
    return opened.image


def compare_maps(image: Image.Image, model_path: str | None, crm_score: str = schema.LEGACY_CRM_SCORE) -> dict[str, np.ndarray]:
    """CRM (perturbing ``crm_score``, as the row was made), CAM and Grad-CAM of the predicted
    class, from one forward pass of the model (torch is imported here, not for a plain ``show``)."""
    import torch

    from xai_pipeline.model import crm as crm_math
    from xai_pipeline.model.net import load_model

    model = load_model(Path(model_path) if model_path else None)
    pixels = torch.from_numpy(to_pixels(image, model.spec.input_size)).unsqueeze(0)
    with torch.no_grad():  # not inference_mode: Grad-CAM differentiates the head on these features
        feats = model.forward_features(model.normalize(pixels)).float()
        logits = model.head(feats.mean(dim=(2, 3)))
        predicted = logits.argmax(dim=1)
        maps = {"CRM": crm_math.crm(feats, model.head, crm_score)}  # type: ignore[arg-type]
        if isinstance(model.head, torch.nn.Linear):
            maps["CAM"] = crm_math.cam(feats, model.head.weight, predicted).clamp_min(0)
    maps["Grad-CAM"] = crm_math.grad_cam(feats, model.head, predicted)
    return {name: m[0].detach().numpy() for name, m in maps.items()}


def show(table_uri: str, figure_id: str, out: str | Path, *, compare: bool = False, model: str | None = None,
         threshold: float = 0.2, settings: S3Settings = S3Settings()) -> Shown:
    """Write the overlay PNG for one figure of the table."""
    row = figure_row(table_uri, figure_id, settings)
    if row[schema.STATUS] != "ok":
        raise SourceError(f"figure {figure_id} has status {row[schema.STATUS]}: {row[schema.ERROR]}")
    image = load_figure(str(row[schema.SOURCE_URI]), settings)
    stored = decode_map(row[schema.CRM], row[schema.CRM_SHAPE], row[schema.CRM_SCALE])  # type: ignore[arg-type]
    label = f"{row[schema.MODALITY]} {float(row[schema.CONFIDENCE]):.2f}"  # type: ignore[arg-type]
    tiles = [(f"figure: {label}", image), (f"CRM (stored) {label}", overlay(image, stored, threshold))]
    panels = row.get(schema.PANELS) or []
    if panels:
        tiles.append((f"{len(panels)} panels: {', '.join(row.get(schema.MODALITIES) or []) or 'no modality'}", boxed(image, panels)))
        for k, panel in enumerate(panels):  # type: ignore[union-attr]
            crop = image.crop((panel["x0"], panel["y0"], panel["x1"], panel["y1"]))
            relevance = decode_map(panel["crm"], panel["crm_shape"], panel["crm_scale"])
            tiles.append((f"panel {k + 1}: {panel['modality']} {panel['confidence']:.2f} ({panel['figure_type']})", overlay(crop, relevance, threshold)))
    if compare:
        for name, relevance in compare_maps(image, model, str(row.get(schema.CRM_SCORE) or schema.LEGACY_CRM_SCORE)).items():
            tiles.append((f"{name} (recomputed)", overlay(image, relevance, threshold)))
    size = 320
    sheet = tile_grid([(t, im.resize((size, max(1, int(size * im.height / im.width))))) for t, im in tiles], tile=size,
                      columns=min(len(tiles), 5))
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return Shown(path, str(row[schema.MODALITY]), float(row[schema.CONFIDENCE]), tuple(t for t, _ in tiles))  # type: ignore[arg-type]
