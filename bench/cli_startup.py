"""How long read-side commands take to start and answer, and what they import.

    python -m bench.cli_startup [--smoke]

Each command runs in a fresh process (``python -m xai_pipeline.cli ...``), as a user types it,
on a one-row table; the table gives the median wall seconds over the repeats and whether torch or
Ray were imported (they must not be: the read side starts without them). ``--help`` of the CLI
and of ``query`` needs neither pyarrow nor deltalake.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import print_table, write_results

CHECK = ("import runpy, sys\nsys.argv = ['xai-pipeline'] + sys.argv[1:]\ntry:\n    runpy.run_module('xai_pipeline.cli', run_name='__main__')\n"
         "except SystemExit:\n    pass\nprint('HEAVY', sorted(m for m in ('torch', 'ray', 'timm') if m in sys.modules), file=sys.stderr)\n")


def _table(folder: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from helpers import one_row_table  # the layout test's table

    return one_row_table(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    repeats = 1 if args.smoke else 5
    with tempfile.TemporaryDirectory() as tmp:
        table = str(_table(Path(tmp)))
        commands = {
            "--help": ["--help"],
            "query --help": ["query", "--help"],
            "query": ["query", "--table", table, "--modality", "ct"],
            "runs": ["runs", "--table", table],
            "table history": ["table", "history", "--table", table],
            "export": ["export", "--table", table, "--format", "jsonl", "--out", f"{tmp}/out.jsonl"],
        }
        rows, results = [], {}
        for name, argv_ in commands.items():
            samples, heavy = [], ""
            for _ in range(repeats):
                started = time.perf_counter()
                done = subprocess.run([sys.executable, "-c", CHECK, *argv_], capture_output=True, text=True, timeout=120)
                samples.append(time.perf_counter() - started)
                heavy = next((line for line in done.stderr.splitlines() if line.startswith("HEAVY")), "HEAVY ?")[6:]
            results[name] = {"seconds": statistics.median(samples), "imported_torch_or_ray": heavy}
            rows.append([name, results[name]["seconds"], heavy])
    print_table(["command", "seconds", "torch/ray imported"], rows)
    write_results("cli_startup", args.smoke, {"results": results})
    return 0 if all(r["imported_torch_or_ray"] == "[]" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
