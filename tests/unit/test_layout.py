"""The package's layout holds: no import cycles, arrows pointing down between the wings, a light
door (``config``, ``schema`` and friends import nothing heavier than pyarrow), and read-side
commands that start without torch or Ray."""

from __future__ import annotations

import ast
import graphlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import one_row_table

PACKAGE = Path(__file__).parents[2] / "xai_pipeline"
HEAVY = ("torch", "torchvision", "timm", "ray", "deltalake", "boto3", "scipy", "sklearn", "matplotlib")
NOT_ON_READ_SIDE = ("torch", "torchvision", "timm", "ray")  # the read side needs deltalake, not these
# Wing -> wings it may import (besides the door modules at the top of the package).
ALLOWED = {
    "store": set(),
    "model": set(),
    "job": {"store", "model"},
    "train": {"store", "model", "job", "read"},  # evaluation draws with the read side's render
    "read": {"store", "model", "job"},
}
DOOR = {"config", "schema", "policies", "errors", "flags"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module this file imports, at the top or inside functions (TYPE_CHECKING excluded)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING" for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in modules)
    return found


def test_no_import_cycles_and_arrows_point_down() -> None:
    modules = _modules()
    graph = {name: {m for m in _imports(path, modules) if m in modules and m != name and m != "xai_pipeline"} for name, path in modules.items()}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the cycle
    wrong = []
    for name, targets in graph.items():
        wing = name.split(".")[1] if name.count(".") >= 2 else None
        for target in targets:
            target_wing = target.split(".")[1] if target.count(".") >= 2 else target.split(".")[-1]
            if name.split(".")[-1] in DOOR and target_wing not in DOOR:
                wrong.append(f"{name} -> {target}")
            if wing in ALLOWED and target_wing in ALLOWED and target_wing != wing and target_wing not in ALLOWED[wing]:
                wrong.append(f"{name} -> {target}")
    assert not wrong, wrong


@pytest.mark.parametrize("door", sorted(DOOR))
def test_door_modules_import_nothing_heavier_than_pyarrow(door: str) -> None:
    heavy = sorted(m for m in _imports(PACKAGE / f"{door}.py", _modules()) if m.split(".")[0] in HEAVY + ("numpy", "PIL", "pandas"))
    assert not heavy, heavy


@pytest.mark.parametrize("argv", [
    ["--help"], ["query", "--help"], ["query", "--table", "{t}", "--modality", "ct"], ["runs", "--table", "{t}"],
    ["table", "history", "--table", "{t}"], ["export", "--table", "{t}", "--format", "jsonl", "--out", "{out}"],
])
def test_read_side_commands_start_without_torch_or_ray(tmp_path: Path, argv: list[str]) -> None:
    table = one_row_table(tmp_path)
    argv = [a.format(t=table, out=tmp_path / "out.jsonl") for a in argv]
    script = ("import json, sys\nfrom xai_pipeline.cli import main\ntry:\n    code = main(json.loads(sys.argv[1]))\nexcept SystemExit as e:\n"
              "    code = e.code\nprint(json.dumps({'code': code, 'heavy': sorted(m for m in sys.modules if m.split('.')[0] in "
              f"{NOT_ON_READ_SIDE!r})}}), file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(argv)], capture_output=True, text=True, timeout=120)
    result = json.loads(done.stderr.strip().splitlines()[-1])
    assert result["code"] in (0, None), done.stderr[-2000:]
    assert result["heavy"] == [], f"{argv[0]} imported {result['heavy']}"
    if argv[0] == "query" and "--table" in argv:
        assert "s3://b/a.png" in done.stdout


def test_the_report_template_escapes_values_from_the_table() -> None:
    from xai_pipeline.read.report import _render

    evil = "<script>alert(1)</script>"
    page = _render(total=1, ok=1, errors_total=0, deleted=0, table_uri="file:///t", modalities=[(evil, 1)], modality_chart="data:,",
                   confidence_chart="data:,", errors=[], threshold=0.2, figure_types=[("chart", 3)], panel_modalities=[], class_maps="", samples=[(evil, "data:,")],
                   runs=[[evil, "index", "finished", 1, 1, 0, 0, 0, 1, 0, 1.0, 0]])
    assert evil not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 4  # modality row, sample heading and alt text, run id
    assert '<section id="summary">' in page and "shown above 20% of the maximum" in page and "none recorded" not in page
