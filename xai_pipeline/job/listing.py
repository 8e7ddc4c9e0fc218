"""The collection's contents: every object's path, URI, size and ETag, from a listing or a manifest.

Listing is paginated (``PAGE_SIZE`` keys a request) and, on S3, parallel across the prefixes one
level below the input prefix. Each page becomes an Arrow record batch as soon as it arrives, so
Python objects never exceed a page per worker; the listing itself is compact Arrow columns (about
100 bytes a key). The driver lists instead of Ray because Ray's directory expansion silently
skips names starting with ``.`` or ``_``, and every object must yield a row.

Manifests: an S3 Inventory report (its ``manifest.json``; CSV or Parquet data files; with
versions, only current versions that are not delete markers count), or any Parquet file with a
``key`` column (optional ``bucket``, ``size``, ``etag``; null sizes and ETags are kept as null).
ETags are normalised in every path (no quotes), so a listing and an inventory agree; a key named
twice yields one row. A local folder that cannot be read stops the listing: skipping it would
make a reindex mark its figures deleted.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xai_pipeline import schema
from xai_pipeline.job.plan import dedupe_listing
from xai_pipeline.job.fetch import read_object
from xai_pipeline.store.source import Location, S3Settings, SourceError, parse_location, s3_client

LISTING_SCHEMA = pa.schema([("path", pa.string()), ("uri", pa.string()), ("size", pa.int64()), ("etag", pa.string())])
PAGE_SIZE = 1000
LIST_THREADS = 8


def _size(value: object) -> int | None:
    """A size from a listing or manifest: ``None`` when absent or empty."""
    if value is None or value == "":
        return None
    return int(value)  # type: ignore[call-overload]


def _batch(location: Location, rows: list[tuple[str, object, object]]) -> pa.RecordBatch:
    """Listing rows; sizes may be null (a key-only manifest) and ETags are normalised (no quotes)."""
    paths = [r[0] for r in rows]
    return pa.record_batch(
        [paths, [location.to_uri(p) for p in paths], [_size(r[1]) for r in rows], [schema.normalize_etag(r[2]) for r in rows]],
        schema=LISTING_SCHEMA,
    )


def _pages_s3(location: Location, settings: S3Settings, prefix: str, page_size: int) -> Iterator[pa.RecordBatch]:
    bucket = location.bucket
    paginator = s3_client(settings).get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}):
        rows = [(f"{bucket}/{o['Key']}", o["Size"], o.get("ETag")) for o in page.get("Contents", [])
                if not (o["Key"].endswith("/") and o["Size"] == 0)]
        if rows:
            yield _batch(location, rows)


def local_etag(info: os.stat_result) -> str:
    """A local file's stand-in for an ETag: its modification time in nanoseconds, so that reindex
    sees a file rewritten in place even at the same size (a copy with new times looks changed)."""
    return f"mtime-ns:{info.st_mtime_ns}"


def _list_local(location: Location, page_size: int) -> Iterator[pa.RecordBatch]:
    root = Path(location.path)
    if root.is_file():
        info = root.stat()
        yield _batch(location, [(str(root), info.st_size, local_etag(info))])
        return
    rows: list[tuple[str, object, object]] = []

    def unreadable(exc: OSError) -> None:
        # os.walk skips folders it cannot read unless told otherwise: a reindex would then mark
        # every figure in them deleted. Stop instead, naming the folder.
        raise SourceError(f"--input {location.uri}: cannot read folder {exc.filename}: {exc.strerror or exc}") from exc

    for folder, _dirs, files in os.walk(root, onerror=unreadable):
        for name in files:
            path = os.path.join(folder, name)
            try:
                info = os.stat(path)
            except FileNotFoundError:  # gone between the walk and the stat
                continue
            except OSError as exc:
                raise SourceError(f"--input {location.uri}: cannot stat {path}: {exc.strerror or exc}") from exc
            if stat.S_ISREG(info.st_mode):
                rows.append((path, info.st_size, local_etag(info)))
                if len(rows) == page_size:
                    yield _batch(location, rows)
                    rows = []
    if rows:
        yield _batch(location, rows)


def _finish(batches: list[pa.RecordBatch], location: Location, flag: str) -> pa.Table:
    """Sorted by path, one row per object: a key named twice (a manifest listing it twice, an
    inventory with several versions) keeps the row with the most known fields."""
    table = pa.Table.from_batches(batches, schema=LISTING_SCHEMA)
    if table.num_rows == 0:
        raise SourceError(f"{flag} {location.uri}: no objects found")
    return with_ids(dedupe_listing(table).combine_chunks())


def _current(row: dict[str, object]) -> bool:
    """False for an inventory row that is not the object's current version: an older version or
    a delete marker (inventories with ``IncludedObjectVersions: All``)."""
    def flag(name: str) -> bool | None:
        value = row.get(name)
        if value is None or value == "":
            return None
        return value if isinstance(value, bool) else str(value).strip().lower() == "true"

    return flag("islatest") is not False and flag("isdeletemarker") is not True


def _inventory_file_rows(unit: dict[str, str], settings: S3Settings) -> Iterator[tuple[str, str, int | None, str | None]]:
    """(bucket, key, size, etag) of the current objects in one S3 Inventory data file."""
    path = unit["path"]
    fetched = read_object(parse_location(f"s3://{path}", "--manifest"), path, settings)
    if fetched.status:
        raise SourceError(f"--manifest: inventory file s3://{path}: {fetched.error}")
    columns = [c.strip().lower() for c in unit["columns"].split(",")]
    if unit["format"] == "CSV":
        text = gzip.decompress(fetched.data).decode() if fetched.data[:2] == b"\x1f\x8b" else fetched.data.decode()
        for values in csv.reader(io.StringIO(text)):
            row = dict(zip(columns, values))
            if _current(row):
                yield row["bucket"], unquote_plus(row["key"]), _size(row.get("size")), row.get("etag") or None
    else:
        for row in pq.read_table(io.BytesIO(fetched.data)).to_pylist():
            lowered = {k.lower(): v for k, v in row.items()}
            if _current(lowered):
                yield lowered["bucket"], lowered["key"], _size(lowered.get("size")), lowered.get("etag")


def _parquet_rows(location: Location, unit: dict[str, str], settings: S3Settings) -> Iterator[tuple[str, str, int | None, str | None]]:
    """(bucket, key, size, etag) of a Parquet manifest, a row group at a time."""
    fetched = read_object(parse_location(f"s3://{unit['path']}", "--manifest"), unit["path"], settings)
    if fetched.status:
        raise SourceError(f"--manifest s3://{unit['path']}: {fetched.error}")
    manifest = pq.ParquetFile(io.BytesIO(fetched.data))
    names = {n.lower(): n for n in manifest.schema_arrow.names}
    if "key" not in names:
        raise SourceError("--manifest: a Parquet manifest needs a 'key' column")
    for group in range(manifest.num_row_groups):
        for row in manifest.read_row_group(group).to_pylist():
            if row[names["key"]] is None or not _current({k.lower(): v for k, v in row.items()}):
                continue
            bucket = row.get(names["bucket"]) if "bucket" in names else location.bucket
            size = row.get(names["size"]) if "size" in names else None
            etag = row.get(names["etag"]) if "etag" in names else None
            yield bucket or location.bucket, row[names["key"]], _size(size), etag


def _prefix(location: Location) -> tuple[str, str]:
    """The input's key and, for S3, the folder it names: ``s3://b/figs`` is ``figs/`` (not ``figs-old/``)."""
    _, _, key = location.path.partition("/")
    return key, (key.rstrip("/") + "/" if key else "")


def units(location: Location, settings: S3Settings = S3Settings(), manifest_uri: str | None = None) -> list[dict[str, str]]:
    """The units of listing work: few, and cheap to find in the driver (the input folder or S3
    prefix, or a manifest's data files). :func:`expand` and :func:`unit_rows` run in tasks."""
    if manifest_uri:
        if location.scheme != "s3":
            raise SourceError("--manifest needs an s3:// --input")
        manifest = parse_location(manifest_uri, "--manifest")
        if manifest.path.endswith(".parquet"):
            return [{"kind": "parquet", "path": manifest.path}]
        if not manifest.path.endswith(".json"):
            raise SourceError(f"--manifest {manifest_uri}: expected an S3 Inventory manifest.json or a .parquet file")
        fetched = read_object(manifest, manifest.path, settings)
        if fetched.status:
            raise SourceError(f"--manifest {manifest_uri}: {fetched.error}")
        doc = json.loads(fetched.data)
        fmt = doc.get("fileFormat", "CSV").upper()
        if fmt not in ("CSV", "PARQUET"):
            raise SourceError(f"--manifest: inventory format {fmt} is not supported (use CSV or Parquet)")
        bucket = doc.get("destinationBucket", "").split(":::")[-1] or location.bucket
        return [{"kind": "inventory", "path": f"{bucket}/{entry['key']}", "format": fmt, "columns": doc.get("fileSchema", "")}
                for entry in doc.get("files", [])]
    if location.scheme == "file":
        if not os.path.exists(location.path):
            raise SourceError(f"--input {location.uri}: no such file or folder")
        return [{"kind": "local", "path": location.path}]
    return [{"kind": "s3_top", "path": location.path}]


def expand(unit: dict[str, str], location: Location, settings: S3Settings, page_size: int = PAGE_SIZE) -> Iterator[list[dict[str, str]]]:
    """Pages of finer units: an S3 input prefix becomes its sub-prefixes one level down (listed
    in parallel later), the objects directly in it, or the object it names; others stay."""
    if unit["kind"] != "s3_top":
        yield [unit]
        return
    key, prefix = _prefix(location)
    found = False
    paginator = s3_client(settings).get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=location.bucket, Prefix=prefix, Delimiter="/", PaginationConfig={"PageSize": page_size}):
        found_here = [{"kind": "s3_prefix", "path": p["Prefix"]} for p in page.get("CommonPrefixes", [])]
        direct = [[f"{location.bucket}/{o['Key']}", o["Size"], o.get("ETag")] for o in page.get("Contents", [])
                  if not (o["Key"].endswith("/") and o["Size"] == 0)]
        if direct:
            found_here.append({"kind": "rows", "path": json.dumps(direct)})
        if found_here:
            found = True
            yield found_here
    if key and not found:
        yield [{"kind": "s3_exact", "path": key}]


def unit_rows(unit: dict[str, str], location: Location, settings: S3Settings, page_size: int = PAGE_SIZE) -> Iterator[pa.RecordBatch]:
    """Listing rows of one unit (:data:`LISTING_SCHEMA`), a page at a time; may repeat keys that
    another unit also names (a manifest listing a key twice): the plan keeps one."""
    kind = unit["kind"]
    if kind == "local":
        yield from _list_local(Location("file", unit["path"]), page_size)
    elif kind == "s3_prefix":
        yield from _pages_s3(location, settings, unit["path"], page_size)
    elif kind == "s3_exact":
        for batch in _pages_s3(location, settings, unit["path"], page_size):
            yield batch.filter(pc.equal(batch.column("path"), location.path))
    elif kind == "rows":
        yield _batch(location, [tuple(r) for r in json.loads(unit["path"])])
    else:
        rows = _inventory_file_rows(unit, settings) if kind == "inventory" else _parquet_rows(location, unit, settings)
        _, prefix = _prefix(location)
        page: list[tuple[str, object, object]] = []
        for bucket, key, size, etag in rows:
            if bucket == location.bucket and key.startswith(prefix) and not key.endswith("/"):
                page.append((f"{bucket}/{key}", size, etag))
                if len(page) == page_size:
                    yield _batch(location, page)
                    page = []
        if page:
            yield _batch(location, page)


def with_ids(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """Listing rows plus their ``figure_id``."""
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    return table.append_column(schema.FIGURE_ID, pa.array([schema.figure_id(u) for u in table.column("uri").to_pylist()], pa.string()))


def _collect(location: Location, settings: S3Settings, manifest_uri: str | None, flag: str, page_size: int) -> pa.Table:
    fine = [u for unit in units(location, settings, manifest_uri) for page in expand(unit, location, settings, page_size) for u in page]
    batches: list[pa.RecordBatch] = []
    try:
        with ThreadPoolExecutor(max_workers=LIST_THREADS) as pool:
            for pages in pool.map(lambda u: list(unit_rows(u, location, settings, page_size)), fine):
                batches += pages
    except OSError as exc:
        raise SourceError(f"{flag} {location.uri}: cannot list objects ({exc})") from exc
    return _finish(batches, location, flag)


def list_objects(location: Location, settings: S3Settings = S3Settings(), flag: str = "--input", page_size: int = PAGE_SIZE) -> pa.Table:
    """Every object under a location, in the driver: ``path``, ``uri``, ``size``, ``etag``,
    ``figure_id``. (A run lists in Ray tasks instead; this is the small-scale path and the oracle.)"""
    return _collect(location, settings, None, flag, page_size)


def read_manifest(manifest_uri: str, location: Location, settings: S3Settings = S3Settings()) -> pa.Table:
    """The objects a manifest names under ``location`` (an S3 input), as :func:`list_objects` returns them."""
    return _collect(location, settings, manifest_uri, "--manifest", PAGE_SIZE)
