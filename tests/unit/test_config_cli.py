from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from xai_pipeline.cli import build_parser, main
from xai_pipeline.config import ConfigError, IndexConfig, TrainConfig, flag_name
from xai_pipeline.store.source import SourceError, parse_location


def test_every_index_field_is_a_flag_of_the_same_name() -> None:
    parser = build_parser()
    args = parser.parse_args(["index", "--input", "in", "--output", "out", "--batch-size", "8", "--crm-score", "softmax"])
    assert args.batch_size == 8 and args.crm_score == "softmax"
    help_text = subprocess.run([sys.executable, "-m", "xai_pipeline.cli", "index", "--help"], capture_output=True, text=True, check=True).stdout
    for f in dataclasses.fields(IndexConfig):
        assert flag_name(f.name) in help_text


def test_bad_values_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="--batch-size"):
        IndexConfig(input="a", output="b", batch_size=0)
    with pytest.raises(ConfigError, match="--mode"):
        IndexConfig(input="a", output="b", mode="bogus")
    with pytest.raises(ConfigError, match="--outlier-fraction"):
        TrainConfig(data="a", out="b", outlier_fraction=1.5)


@pytest.mark.parametrize("config, field, value, message", [
    (IndexConfig, "commit_every", 0, "--commit-every must be positive, got 0"),
    (IndexConfig, "read_timeout", -1.5, "--read-timeout must be positive, got -1.5"),
    (IndexConfig, "read_retries", -1, "--read-retries must be >= 0, got -1"),
    (IndexConfig, "num_gpus", -0.5, "--num-gpus must be >= 0, got -0.5"),
    (IndexConfig, "roi_threshold", 0.0, "--roi-threshold must be in (0, 1], got 0.0"),
    (IndexConfig, "roi_threshold", 1.2, "--roi-threshold must be in (0, 1], got 1.2"),
    (TrainConfig, "val_fraction", 1.0, "--val-fraction must be in [0, 1), got 1.0"),
    (TrainConfig, "min_accept", float("nan"), "--min-accept must be in [0, 1), got nan"),
    (TrainConfig, "source_balance", 1.01, "--source-balance must be in [0, 1], got 1.01"),
    (TrainConfig, "mr_contrast_probability", -0.2, "--mr-contrast-probability must be in [0, 1], got -0.2"),
    (TrainConfig, "simulated_ultrasound_probability", 1.5, "--simulated-ultrasound-probability must be in [0, 1], got 1.5"),
    (TrainConfig, "simulated_mr_probability", -0.5, "--simulated-mr-probability must be in [0, 1], got -0.5"),
    (TrainConfig, "simulated_endoscopy_probability", 1.2, "--simulated-endoscopy-probability must be in [0, 1], got 1.2"),
    (TrainConfig, "epochs", float("nan"), "--epochs must be positive, got nan"),
    (TrainConfig, "epochs", None, "--epochs must be positive, got None"),  # only the optional fields take None
    (IndexConfig, "read_timeout", None, "--read-timeout must be positive, got None"),
])
def test_out_of_range_values_name_the_flag_and_the_range(config: type, field: str, value: float, message: str) -> None:
    required = {"input": "in", "output": "out"} if config is IndexConfig else {"data": "d", "out": "o"}
    with pytest.raises(ConfigError) as raised:
        config(**required, **{field: value})
    assert str(raised.value) == message
    config(**required, batch_size=None, concurrency=None, num_gpus=None) if config is IndexConfig else config(**required)  # defaults pass


def test_configuration_errors_fail_fast_with_exit_code_2(tmp_path, capsys) -> None:
    code = main(["index", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "t")])
    assert code == 2
    assert "--input" in capsys.readouterr().err
    code = main(["index", "--input", str(tmp_path), "--output", str(tmp_path / "t"), "--model", str(tmp_path / "m.pt")])
    assert code == 2


def test_parse_location_normalises_uris(tmp_path) -> None:
    s3 = parse_location("s3://bucket/figs/a b%20?#.png", "--input")
    assert s3.scheme == "s3" and s3.path == "bucket/figs/a b%20?#.png" and s3.uri == "s3://bucket/figs/a b%20?#.png"
    assert parse_location("s3://bucket", "--input").path == "bucket"
    local = parse_location(str(tmp_path / "x" / ".." / "y"), "--output")
    assert local.scheme == "file" and local.path == str(tmp_path / "y") and local.uri == f"file://{tmp_path / 'y'}"
    with pytest.raises(SourceError, match="--input"):
        parse_location("gs://bucket/x", "--input")
    with pytest.raises(SourceError, match="bucket"):
        parse_location("s3:///key", "--input")


def test_readme_documents_every_index_flag_and_column() -> None:
    from pathlib import Path

    from xai_pipeline.schema import TABLE_SCHEMA

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for f in dataclasses.fields(IndexConfig):
        assert f"`{flag_name(f.name)}`" in readme, f.name
    for name in TABLE_SCHEMA.names:
        assert f"`{name}`" in readme, name
