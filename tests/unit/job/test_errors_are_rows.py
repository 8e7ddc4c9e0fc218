"""Errors are data: an exception for one figure in any stage becomes that figure's row, and the
rest of the batch goes on; manifests, ETags and local read errors never fail a run."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers import gradient, image_bytes
from xai_pipeline.job import codec, decode, faults, fetch
from xai_pipeline import schema
from xai_pipeline.store import source
from xai_pipeline.job.classify import FigureClassifier
from xai_pipeline.job.listing import LISTING_SCHEMA, _batch, _current, _finish, list_objects
from xai_pipeline.job.fetch import fetch_batch, read_object
from xai_pipeline.store.source import Location, S3Settings, SourceError, parse_location


def _fetched(paths: list[str], datas: list[bytes]) -> dict[str, np.ndarray]:
    n = len(paths)
    return {"uri": np.array([f"file://{p}" for p in paths], dtype=object), "path": np.array(paths, dtype=object),
            "size": np.array([float(len(d)) for d in datas]), "etag": np.array([None] * n, dtype=object),
            "bytes": np.array(datas, dtype=object), "read_status": np.array([""] * n, dtype=object),
            "read_error": np.array([""] * n, dtype=object)}


def test_an_exception_in_decode_is_that_figures_row(monkeypatch: pytest.MonkeyPatch) -> None:
    png = image_bytes(gradient(), "PNG")
    real = decode.decode_image

    def flaky(data: bytes, size: int, limits: decode.DecodeLimits = decode.DecodeLimits(), panels: bool = False) -> decode.Decoded:
        if data == b"poison" + png:
            raise MemoryError("a decoder bug")
        return real(data, size, limits, panels)

    monkeypatch.setattr(decode, "decode_image", flaky)
    out = decode.decode_batch(_fetched(["/a.png", "/b.png", "/c.png"], [png, b"poison" + png, png]), 32)
    assert list(out[schema.STATUS]) == ["ok", "decode_error", "ok"]
    assert "MemoryError: a decoder bug" in out[schema.ERROR][1]
    assert out[schema.ETAG].tolist() == [None, None, None]  # unknown ETags stay null, never "None"


@pytest.fixture(scope="module")
def classifier() -> FigureClassifier:
    return FigureClassifier(device="cpu", torch_threads=2)


def _classify_batch(classifier: FigureClassifier, n: int) -> dict[str, np.ndarray]:
    size = classifier.spec.input_size
    return {schema.PIXELS: np.random.default_rng(1).integers(0, 255, (n, 3, size, size), dtype=np.uint8),
            schema.STATUS: np.array(["ok"] * n, dtype=object), schema.ERROR: np.array([""] * n, dtype=object),
            schema.SOURCE_URI: np.array([f"s3://b/{i}.png" for i in range(n)], dtype=object)}


def test_a_figure_the_model_fails_on_is_a_model_error_row(classifier: FigureClassifier, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    batch = _classify_batch(classifier, 5)
    whole = classifier(batch)
    rules = tmp_path / "faults.json"
    rules.write_text(json.dumps({"classify": ["s3://b/2.png"]}))
    monkeypatch.setenv(faults.FAULTS_ENV, str(rules))
    out = classifier(batch)
    assert list(out[schema.STATUS]) == ["ok", "ok", "model_error", "ok", "ok"]
    assert "injected classify fault" in out[schema.ERROR][2] and out[schema.MODALITY][2] == ""
    keep = [0, 1, 3, 4]
    np.testing.assert_allclose(out[schema.PROBABILITIES][keep], whole[schema.PROBABILITIES][keep], atol=1e-5)
    assert list(out[schema.CRM_SCORE]) == ["logit"] * 5


def test_non_finite_model_output_is_a_model_error_row(classifier: FigureClassifier, monkeypatch: pytest.MonkeyPatch) -> None:
    real = classifier._host

    def with_nan(out: object) -> np.ndarray:
        host = real(out)  # type: ignore[arg-type]
        host[1, -1] = np.nan
        return host

    monkeypatch.setattr(classifier, "_host", with_nan)
    out = classifier(_classify_batch(classifier, 3))
    assert list(out[schema.STATUS]) == ["ok", "model_error", "ok"]
    assert "non-finite" in out[schema.ERROR][1]


def test_a_nan_map_in_encode_is_an_encode_error_row() -> None:
    maps = np.ones((3, 7, 7), dtype=np.float32)
    maps[1, 2, 2] = np.nan
    n = 3
    batch = {schema.FIGURE_ID: np.array(["a", "b", "c"], dtype=object), schema.SOURCE_URI: np.array(["s3://x/a", "s3://x/b", "s3://x/c"], dtype=object),
             schema.ETAG: np.array(['"q"', None, ""], dtype=object), schema.SIZE: np.array([5, -1, 0]),
             schema.WIDTH: np.full(n, 70, dtype=np.int32), schema.HEIGHT: np.full(n, 70, dtype=np.int32),
             schema.STATUS: np.array(["ok"] * n, dtype=object), schema.ERROR: np.array([""] * n, dtype=object),
             schema.MODALITY: np.array(["ct"] * n, dtype=object), schema.CONFIDENCE: np.full(n, 0.9, dtype=np.float32),
             schema.PROBABILITIES: np.full((n, 2), 0.5, dtype=np.float32), schema.CRM_MAP: maps,
             schema.MODEL_NAME: np.array(["m"] * n, dtype=object), schema.MODEL_VERSION: np.array(["1"] * n, dtype=object),
             schema.CRM_SCORE: np.array(["softmax"] * n, dtype=object)}
    rows = codec.encode_batch(batch, run_id="r", roi_threshold=0.3).to_pylist()
    assert [r["status"] for r in rows] == ["ok", "encode_error", "ok"]
    assert rows[1]["crm"] is None and rows[1]["confidence"] is None and "NaN" in rows[1]["error"]
    assert [r["etag"] for r in rows] == ["q", None, None] and [r["size"] for r in rows] == [5, None, 0]
    assert {r["crm_score"] for r in rows} == {"softmax"} and rows[0]["roi_threshold"] == pytest.approx(0.3)


def test_local_read_errors_of_any_kind_are_rows(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    os.symlink(loop, loop)  # ELOOP
    folder = tmp_path / "folder"
    folder.mkdir()
    location = parse_location(str(tmp_path), "--input")
    for path in (loop, folder):
        fetched = read_object(location, str(path))
        assert fetched.status == "read_error" and fetched.error.startswith("cannot read")
    assert read_object(location, str(tmp_path / "gone")).status == "missing"


def test_fetch_turns_any_exception_into_a_read_error_and_keeps_null_sizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.png").write_bytes(b"12345")
    (tmp_path / "b.png").write_bytes(b"678")
    location = parse_location(str(tmp_path), "--input")
    real = fetch.read_object

    def broken(location: Location, path: str, *args: object, **kwargs: object) -> fetch.Fetched:
        if path.endswith("b.png"):
            raise RuntimeError("nobody listed this")
        return real(location, path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fetch, "read_object", broken)
    batch = {"path": np.array([str(tmp_path / "a.png"), str(tmp_path / "b.png")], dtype=object),
             "size": np.array([np.nan, np.nan]), "etag": np.array([None, '"x"'], dtype=object)}
    out = fetch_batch(batch, location, S3Settings(), max_bytes=100)
    assert list(out["read_status"]) == ["", "read_error"] and "nobody listed this" in out["read_error"][1]
    assert out["size"].tolist() == [5, -1]  # bytes read; -1 (null in the table) when unknown
    assert out["etag"].tolist() == [None, "x"]


def test_boto3_clients_are_made_once_per_process_under_a_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = S3Settings(endpoint_url="http://127.0.0.1:9", region="us-east-1")
    clients: list[object] = []
    barrier = threading.Barrier(16)

    def take() -> None:
        barrier.wait()
        clients.append(source.s3_client(settings, read_timeout=7.0))

    threads = [threading.Thread(target=take) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in clients}) == 1
    assert clients[0].meta.config.read_timeout == 7.0  # type: ignore[attr-defined]


def test_listing_rows_normalise_etags_keep_null_sizes_and_dedupe_keys() -> None:
    location = Location("s3", "b/in")
    rows = [("b/in/x.png", None, '"e1"'), ("b/in/x.png", 10, '"e1"'), ("b/in/y.png", "", ""), ("b/in/z.png", 3, "W/\"e3\"")]
    table = _finish([_batch(location, rows)], location, "--manifest")
    assert table.column("path").to_pylist() == ["b/in/x.png", "b/in/y.png", "b/in/z.png"]
    assert table.column("size").to_pylist() == [10, None, 3]
    assert table.column("etag").to_pylist() == ["e1", None, "e3"]
    assert table.schema.field("size").type == LISTING_SCHEMA.field("size").type


def test_inventory_rows_of_old_versions_and_delete_markers_do_not_count() -> None:
    assert _current({"islatest": "true", "isdeletemarker": "false"})
    assert not _current({"islatest": "false", "isdeletemarker": "false"})
    assert not _current({"islatest": "true", "isdeletemarker": "true"})
    assert _current({}) and _current({"islatest": True, "isdeletemarker": None})


def test_an_unreadable_local_folder_stops_the_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.png").write_bytes(b"1")
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "b.png").write_bytes(b"2")
    real = os.scandir

    def scandir(path: object = ".") -> object:
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(SourceError, match="cannot read folder .*locked"):
        list_objects(parse_location(str(tmp_path), "--input"))


def test_etags_are_normalised_in_one_place() -> None:
    assert schema.normalize_etag('"abc"') == "abc" and schema.normalize_etag("abc") == "abc"
    assert schema.normalize_etag('W/"abc"') == "abc" and schema.normalize_etag(' "a-3" ') == "a-3"
    assert schema.normalize_etag(None) is None and schema.normalize_etag('""') is None
    assert schema.normalize_etag("mtime-ns:123") == "mtime-ns:123"


def test_task_fault_hook_raises_for_the_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = tmp_path / "f.json"
    rules.write_text(json.dumps({"task:encode": ["bad"]}))
    monkeypatch.setenv(faults.FAULTS_ENV, str(rules))
    faults.maybe_raise_task("encode", ["s3://b/ok.png"])
    faults.maybe_raise("encode", "s3://b/bad.png")  # a per-figure rule was not asked for
    with pytest.raises(faults.InjectedFault):
        faults.maybe_raise_task("encode", ["s3://b/ok.png", "s3://b/bad.png"])


def test_the_delay_hook_slows_only_the_named_figures(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    slept: list[float] = []
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    faults.maybe_delay("decode", "file:///in/fig07.png")
    assert slept == []  # no hook
    rules = tmp_path / "faults.json"
    rules.write_text(json.dumps({"delay:decode": ["fig07.png"]}))
    monkeypatch.setenv(faults.FAULTS_ENV, str(rules))
    faults.maybe_delay("decode", "file:///in/fig07.png")
    faults.maybe_delay("decode", "file:///in/fig08.png")
    faults.maybe_delay("fetch", "file:///in/fig07.png")
    assert slept == [faults.DELAY_SECONDS]
