"""``xai-pipeline report``: one self-contained HTML page about a table (images inlined).

Sections: summary, figures per modality, confidence histogram, errors by kind, the class-mean CRM
map of each modality (the paper's class-specific ROI maps: maps normalised by their maximum,
averaged, shown above 20% of the maximum), sample overlays per modality, and the run records.
Aggregates run as SQL on the snapshot; only the sampled rows' maps and figures are read.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from xai_pipeline import records, schema
from xai_pipeline.codec import decode_map
from xai_pipeline.progress import Progress
from xai_pipeline.query import run_sql
from xai_pipeline.render import bar_chart, crm_heatmap, overlay, tile_grid
from xai_pipeline.show import load_figure
from xai_pipeline.source import S3Settings, SourceError, make_filesystem, parse_location

SECTIONS = ("summary", "modalities", "confidence", "errors", "class-maps", "samples", "runs")
MAPS_PER_MODALITY = 2000
ALIVE = f"{schema.DELETED_AT} IS NULL"


def _png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(key: str, title: str, content: str) -> str:
    return f'<section id="{key}"><h2>{html.escape(title)}</h2>{content}</section>'


def _class_map(table: str, modality: str, settings: S3Settings) -> tuple[np.ndarray, int] | None:
    literal = modality.replace("'", "''")
    rows = run_sql(table, f"SELECT {schema.CRM}, {schema.CRM_SHAPE} FROM figures WHERE {ALIVE} AND {schema.STATUS} = 'ok' "
                          f"AND {schema.MODALITY} = '{literal}' LIMIT {MAPS_PER_MODALITY}", settings=settings).to_pylist()
    maps = [decode_map(r[schema.CRM], r[schema.CRM_SHAPE], 1.0, normalized=True) for r in rows if r[schema.CRM]]
    shapes = {m.shape for m in maps}
    if not maps or len(shapes) != 1:
        return None
    return np.mean(maps, axis=0), len(maps)


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

    parts = [_section("summary", "Summary", _table(["figures", "ok", "errors", "marked deleted", "table"],
                                                   [[total, sum(n for _, n in modalities), sum(n for _, n in errors), deleted, location.uri]]))]
    parts.append(_section("modalities", "Figures per modality",
                          f'<img alt="figures per modality" src="{_png(bar_chart([m for m, _ in modalities], [n for _, n in modalities]))}">'
                          + _table(["modality", "figures"], [[m, n] for m, n in modalities])))
    parts.append(_section("confidence", "Confidence of the top class",
                          f'<img alt="confidence histogram" src="{_png(bar_chart([f"{i / 20:.2f}" for i in range(20)], bins))}">'))
    parts.append(_section("errors", "Errors by kind", _table(["status", "figures"], [[s, n] for s, n in errors]) if errors else "<p>none</p>"))

    with Progress("report", len(modalities) * (1 + samples), force=progress) as bar:
        tiles = []
        for modality, _ in modalities:
            mean = _class_map(table, modality, settings)
            bar.update()
            if mean is not None:
                tiles.append((f"{modality} (n={mean[1]})", crm_heatmap(mean[0], (224, 224), threshold)))
        parts.append(_section("class-maps", f"Class-mean CRM maps (shown above {threshold:.0%} of the maximum)",
                              f'<img alt="class-mean CRM maps" src="{_png(tile_grid(tiles))}">' if tiles else "<p>none</p>"))
        sample_html = []
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
                sample_html.append(f"<h3>{html.escape(modality)}</h3><img alt=\"{html.escape(modality)} samples\" src=\"{_png(tile_grid(shown, columns=samples))}\">")
        parts.append(_section("samples", "Sample overlays per modality", "".join(sample_html) or "<p>none</p>"))

    runs = records.list_runs(location, make_filesystem(location, settings))
    run_rows = [[r["run_id"], r["kind"], r.get("state") or "finished", r.get("inputs", ""), r.get("processed", ""), r.get("skipped", ""),
                 r.get("deleted", 0), r.get("missing", 0), r.get("ok", ""), r.get("errors", ""), r.get("figures_per_second", ""),
                 r.get("table_version", "")] for r in runs]
    parts.append(_section("runs", "Runs", _table(["run", "kind", "state", "inputs", "processed", "skipped", "deleted", "missing", "ok",
                                                 "errors", "figures/s", "version"], run_rows) if run_rows else "<p>none recorded</p>"))
    page = (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>xai-pipeline report</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1100px} table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #bbb;padding:3px 8px;text-align:left} img{max-width:100%;border:1px solid #ddd}"
        "</style></head><body><h1>Figure modalities and CRM: report</h1>" + "".join(parts) + "</body></html>"
    )
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
