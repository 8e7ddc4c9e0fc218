"""The index job end to end against a real S3-protocol server and a real local Ray."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from conftest import real_figures
from xai_pipeline.job.codec import decode_map
from xai_pipeline.config import IndexConfig
from xai_pipeline.model.net import DEFAULT_MODEL_PATH, read_spec
from xai_pipeline.job.pipeline import run_index

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_index_s3_to_delta_with_corrupt_files(s3, s3_endpoint: str, ray_session: None, dataset_dir: Path) -> None:
    from deltalake import DeltaTable

    s3.create_bucket(Bucket="figures")
    s3.create_bucket(Bucket="tables")
    expected: dict[str, str] = {}
    for i, (label, path) in enumerate(real_figures(dataset_dir, per_class=2)):
        key = f"pmc/{label}/{'fig ü ' if i == 0 else ''}{path.name}"
        s3.put_object(Bucket="figures", Key=key, Body=path.read_bytes())
        expected[f"s3://figures/{key}"] = label
    jpeg = (dataset_dir / "ct").iterdir().__next__().read_bytes()
    s3.put_object(Bucket="figures", Key="pmc/broken/truncated.jpg", Body=jpeg[: len(jpeg) // 3])
    s3.put_object(Bucket="figures", Key="pmc/broken/_error-page.png", Body=b"<html><body>403 Forbidden</body></html>")
    expected["s3://figures/pmc/broken/truncated.jpg"] = "truncated"
    expected["s3://figures/pmc/broken/_error-page.png"] = "not_an_image"

    summary = run_index(IndexConfig(input="s3://figures/pmc/", output="s3://tables/figures", endpoint_url=s3_endpoint, batch_size=8))
    assert (summary.inputs, summary.ok, summary.errors) == (14, 12, 2)
    assert summary.errors_by_kind == {"not_an_image": 1, "truncated": 1}
    assert summary.table_version == 0

    options = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"}
    table = DeltaTable("s3://tables/figures", storage_options=options)
    assert len(table.history()) == 1  # one atomic commit
    rows = table.to_pyarrow_table().to_pylist()
    assert len(rows) == 14 and len({r["figure_id"] for r in rows}) == 14
    assert {r["source_uri"] for r in rows} == set(expected)

    spec = read_spec(DEFAULT_MODEL_PATH)
    correct = 0
    for row in rows:
        truth = expected[row["source_uri"]]
        if truth in ("truncated", "not_an_image"):
            assert row["status"] == truth and row["error"] and row["crm"] is None and row["modality"] is None
            continue
        assert row["status"] == "ok" and row["error"] is None
        assert row["etag"] and '"' not in row["etag"]  # from the S3 listing, without its quotes
        probabilities = np.array(row["probabilities"])
        assert len(probabilities) == spec.num_classes and abs(probabilities.sum() - 1) < 1e-4
        assert row["confidence"] == pytest.approx(probabilities.max())
        relevance = decode_map(row["crm"], row["crm_shape"], row["crm_scale"])
        assert row["crm_shape"] == [7, 7] and row["crm_scale"] > 0 and max(row["crm"]) == 255
        assert np.isfinite(relevance).all()
        assert row["width"] > 0 and row["height"] > 0 and row["size"] > 0
        assert row["model_name"] == spec.name and row["run_id"] == summary.run_id
        correct += row["modality"] == truth
    # The class order of the probabilities must match the model's names: real figures are mostly right.
    assert correct >= 10, Counter((expected[r["source_uri"]], r["modality"]) for r in rows)


def test_jpeg_decoder_classifier_gives_the_rows_of_the_pil_path(s3, s3_endpoint: str, ray_session: None, dataset_dir: Path) -> None:
    """``--jpeg-decoder classifier`` on the CPU (libjpeg-turbo in the actor; nvjpeg on a GPU):
    the same statuses, sizes and labels as PIL, bad and non-plain JPEGs included."""
    import io

    from PIL import Image

    from bench.corpus import bad_inputs
    from xai_pipeline.store.sink import read_rows
    from xai_pipeline.store.source import parse_location

    s3.create_bucket(Bucket="jpegdec")
    for label, path in real_figures(dataset_dir, per_class=2):
        s3.put_object(Bucket="jpegdec", Key=f"in/{label}/{path.name}", Body=path.read_bytes())
    png = io.BytesIO()
    Image.open(path).save(png, format="PNG")
    s3.put_object(Bucket="jpegdec", Key="in/other/as.png", Body=png.getvalue())
    for case in bad_inputs():
        s3.put_object(Bucket="jpegdec", Key=f"in/corpus/{case.name}", Body=case.data)
    columns = ["source_uri", "status", "error", "width", "height", "modality", "probabilities"]
    tables = {}
    for decoder in ("pil", "classifier"):
        summary = run_index(IndexConfig(input="s3://jpegdec/in/", output=f"s3://jpegdec/table-{decoder}", endpoint_url=s3_endpoint,
                                        batch_size=8, jpeg_decoder=decoder))
        assert summary.inputs == 12 + 1 + len(bad_inputs()) and summary.processed == summary.inputs
        target = parse_location(f"s3://jpegdec/table-{decoder}", "--output")
        tables[decoder] = {r["source_uri"]: r for r in read_rows(target, {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1"},
                                                                 columns=columns).to_pylist()}
    assert tables["pil"].keys() == tables["classifier"].keys()
    for uri, pil in tables["pil"].items():
        device = tables["classifier"][uri]
        assert [pil[c] for c in columns[:-1]] == [device[c] for c in columns[:-1]], uri
        if pil["status"] == "ok":
            assert np.abs(np.array(pil["probabilities"]) - np.array(device["probabilities"])).max() < 0.05, uri
