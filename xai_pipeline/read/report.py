"""``xai-pipeline report``: one self-contained HTML page about a table (images inlined).

Sections: summary, figures per modality, confidence histogram, errors by kind, the class-mean CRM
map of each modality (the paper's class-specific ROI maps: maps normalised by their maximum,
averaged, shown above 20% of the maximum), sample overlays per modality, and the run records.
Aggregates run as SQL on the snapshot; only the sampled rows' maps and figures are read. The page
is ``templates/report.html.j2``, rendered by jinja2 with autoescaping (values from the table are
escaped, e.g. a file named ``<script>.png``).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xai_pipeline.store import records
from xai_pipeline import schema
from xai_pipeline.job.codec import decode_map
from xai_pipeline.progress import progress_bar
from xai_pipeline.read.query import run_sql
from xai_pipeline.read.render import bar_chart, crm_heatmap, overlay, tile_grid
from xai_pipeline.read.show import load_figure
from xai_pipeline.store.source import S3Settings, SourceError, make_filesystem, parse_location

SECTIONS = ("summary", "modalities", "figure-types", "panel-modalities", "confidence", "errors", "class-maps", "samples", "runs")
MAPS_PER_MODALITY = 2000
ALIVE = f"{schema.DELETED_AT} IS NULL"


def _png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _render(**context: Any) -> str:
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("xai_pipeline.read", "templates"), autoescape=select_autoescape(["html", "j2"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template("report.html.j2").render(**context)


def _class_map(table: str, modality: str, settings: S3Settings) -> tuple[np.ndarray, int] | None:
    literal = modality.replace("'", "''")
    rows = run_sql(table, f"SELECT {schema.CRM}, {schema.CRM_SHAPE} FROM figures WHERE {ALIVE} AND {schema.STATUS} = 'ok' "
                          f"AND {schema.MODALITY} = '{literal}' LIMIT {MAPS_PER_MODALITY}", settings=settings).to_pylist()
    maps = [decode_map(r[schema.CRM], r[schema.CRM_SHAPE], 1.0, normalized=True) for r in rows if r[schema.CRM]]
    shapes = {m.shape for m in maps}
    if not maps or len(shapes) != 1:
        return None
    return np.mean(maps, axis=0), len(maps)


def _figure_counts(table: str, settings: S3Settings) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Figures per figure type, and compound figures per modality found in their panels (a
    figure with a CT and an MRI panel counts once for each); empty for tables before schema 5."""
    columns = set(run_sql(table, "SELECT * FROM figures LIMIT 0", settings=settings).schema.names)
    if schema.MODALITIES not in columns:
        return [], []
    ok = f"{ALIVE} AND {schema.STATUS} = 'ok'"
    types = run_sql(table, f"SELECT {schema.FIGURE_TYPE} AS t, COUNT(*) AS n FROM figures WHERE {ok} GROUP BY 1 ORDER BY n DESC, t",
                    settings=settings).to_pylist()
    panels = run_sql(table, f"SELECT m, COUNT(*) AS n FROM (SELECT unnest({schema.MODALITIES}) AS m FROM figures WHERE {ok} "
                            f"AND {schema.MODALITY} = '{schema.COMPOUND}') GROUP BY m ORDER BY n DESC, m", settings=settings).to_pylist()
    return [(r["t"] or "unknown", r["n"]) for r in types], [(r["m"], r["n"]) for r in panels]


def build_report(table: str, out: str | Path, *, samples: int = 3, threshold: float = 0.2, settings: S3Settings = S3Settings(),
                 progress: bool = False) -> Path:
    """Write the report for ``table`` to ``out``; returns its path."""
    location = parse_location(table, "--table")
    counts = run_sql(table, f"SELECT {schema.STATUS} AS status, {schema.MODALITY} AS modality, COUNT(*) AS n FROM figures "
                            f"WHERE {ALIVE} GROUP BY {schema.STATUS}, {schema.MODALITY} ORDER BY n DESC", settings=settings).to_pylist()
    if not counts:
        raise SourceError(f"--table {table}: no figures")
    modalities = [(r["modality"], r["n"]) for r in counts if r["status"] == "ok"]
    errors = [(r["status"], r["n"]) for r in counts if r["status"] != "ok"]
    total = sum(r["n"] for r in counts)
    histogram = run_sql(table, f"SELECT CAST(FLOOR({schema.CONFIDENCE} * 20) AS INT) AS bin, COUNT(*) AS n FROM figures "
                               f"WHERE {ALIVE} AND {schema.STATUS} = 'ok' GROUP BY 1 ORDER BY 1", settings=settings).to_pylist()
    bins = [0] * 20
    for r in histogram:
        bins[min(19, int(r["bin"]))] += r["n"]
    deleted = run_sql(table, f"SELECT COUNT(*) AS n FROM figures WHERE NOT ({ALIVE})", settings=settings).to_pylist()[0]["n"]
    figure_types, panel_modalities = _figure_counts(table, settings)

    with progress_bar("report", len(modalities) * (1 + samples), force=progress) as bar:
        tiles = []
        for modality, _ in modalities:
            mean = _class_map(table, modality, settings)
            bar.update()
            if mean is not None:
                tiles.append((f"{modality} (n={mean[1]})", crm_heatmap(mean[0], (224, 224), threshold)))
        class_maps = _png(tile_grid(tiles)) if tiles else ""
        sample_pictures = []
        for modality, _ in modalities:
            literal = modality.replace("'", "''")
            rows = run_sql(table, f"SELECT * FROM figures WHERE {ALIVE} AND {schema.STATUS} = 'ok' AND {schema.MODALITY} = '{literal}' "
                                  f"ORDER BY {schema.CONFIDENCE} DESC LIMIT {samples}", settings=settings).to_pylist()
            shown = []
            for row in rows:
                try:
                    image = load_figure(row[schema.SOURCE_URI], settings)
                except SourceError as exc:
                    shown.append((f"unavailable: {exc}"[:60], Image.new("RGB", (224, 224), (240, 240, 240))))
                else:
                    relevance = decode_map(row[schema.CRM], row[schema.CRM_SHAPE], row[schema.CRM_SCALE])
                    shown.append((f"{row[schema.CONFIDENCE]:.2f} {Path(row[schema.SOURCE_URI]).name[:28]}", overlay(image, relevance, threshold)))
                bar.update()
            if shown:
                sample_pictures.append((modality, _png(tile_grid(shown, columns=samples))))

    runs = records.list_runs(location, make_filesystem(location, settings))
    run_rows = [[r["run_id"], r["kind"], r.get("state") or "finished", r.get("inputs", ""), r.get("processed", ""), r.get("skipped", ""),
                 r.get("deleted", 0), r.get("missing", 0), r.get("ok", ""), r.get("errors", ""), r.get("figures_per_second", ""),
                 r.get("table_version", "")] for r in runs]
    page = _render(
        total=total, ok=sum(n for _, n in modalities), errors_total=sum(n for _, n in errors), deleted=deleted, table_uri=location.uri,
        modalities=modalities, modality_chart=_png(bar_chart([m for m, _ in modalities], [n for _, n in modalities])),
        confidence_chart=_png(bar_chart([f"{i / 20:.2f}" for i in range(20)], bins)), errors=errors, threshold=threshold,
        figure_types=figure_types, panel_modalities=panel_modalities,
        class_maps=class_maps, samples=sample_pictures, runs=run_rows,
    )
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
