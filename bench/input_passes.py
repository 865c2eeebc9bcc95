"""Passes over a job's input: secret masking and macro resolution, against the patterns they replaced.

Every job's argv, environment and rendered submission pass through `redact` before they are
logged, and its resource args through `resolve_macros`, in the agent's one process. The old
masking pattern let a name start anywhere inside a word, so a word with no `=` was scanned once
per starting character; the old macro pattern scanned from every `${` to the end when no `}`
followed: both quadratic in the input's length. The baselines (kept below) are measured in the
same run.

Inputs are the worst cases of the old patterns (one long word with no `=`; `${` repeated with no
`}`) and a secret assignment with a long value, at sizes up to the longest argument a job may
send (`MAX_ARGUMENT`) and a 1 MB run config's worth. Where a baseline would take minutes it is
not run. Ratio: baseline median / new median.

    .venv/bin/python bench/input_passes.py              # 5 samples per cell
    .venv/bin/python bench/input_passes.py --samples 3

Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from dispatch import p95, print_table, progress  # noqa: E402

from prefect_launch.macros import resolve_macros  # noqa: E402
from prefect_launch.redact import MASK, redact  # noqa: E402
from prefect_launch.spec import MAX_ARGUMENT  # noqa: E402

# The patterns redact.py and macros.py used before (the baselines).
OLD_ASSIGNMENT = re.compile(
    r"((?:[\w-]*(?:api[_-]?key|token|secret|password|passwd|credential|auth)[\w-]*)=)([^\s]+)", re.I
)
OLD_MACRO = re.compile(r"\$\{([^}]*)\}")
SIZES = [1_000, 4_000, 16_000, MAX_ARGUMENT, 1_000_000]
# input: (which pass, a text of n characters, the largest n its baseline is run at)
INPUTS = {
    "mask: one word, no '='": ("redact", lambda n: "a" * n, 16_000),
    "mask: --api-key=<long value>": ("redact", lambda n: "--api-key=" + "s" * (n - 10), max(SIZES)),
    "macros: '${' repeated, no '}'": ("macros", lambda n: "${" * (n // 2), 65_536),
}


def new_macros(text: str) -> object:
    return resolve_macros({"env": text}, {})


def old_macros(text: str) -> str:
    return OLD_MACRO.sub("", text)  # the same scan: the old pattern found no macro in these inputs either


def old_redact(text: str) -> str:
    return OLD_ASSIGNMENT.sub(lambda m: m.group(1) + MASK, text)


PASSES = {"redact": (redact, old_redact), "macros": (new_macros, old_macros)}  # new, baseline


def timed(fn, text: str, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        began = time.perf_counter()
        fn(text)
        times.append(time.perf_counter() - began)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=5)
    samples = parser.parse_args().samples
    load_before, began = os.getloadavg()[0], time.monotonic()
    rows = ["| input | characters | median | p95 | old pattern median | ratio |", "|---|---:|---:|---:|---:|---:|"]
    for name, (kind, make, baseline_up_to) in INPUTS.items():
        new_pass, old_pass = PASSES[kind]
        for size in SIZES:
            text = make(size)
            progress(f"{name}, {size:,} characters")
            new = timed(new_pass, text, samples)
            old = None
            if size <= baseline_up_to:
                old = timed(old_pass, text, samples)
                if kind == "redact":
                    assert redact([text]) == [old_redact(text)], "the two patterns mask differently"
            ratio = f"{statistics.median(old) / statistics.median(new):,.2f}x" if old else "-"
            old_cell = f"{statistics.median(old) * 1000:,.2f} ms" if old else "not run (minutes)"
            rows.append(f"| {name} | {size:,} | {statistics.median(new) * 1000:,.2f} ms | {p95(new) * 1000:,.2f} ms "
                        f"| {old_cell} | {ratio} |")
    print_table("\n".join(rows), load_before, began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
