"""Gathers the benchmark tables of bench/results into one summary and puts it in the README.

Each benchmark writes its own Markdown table (a line saying what was measured and how, then the
table) and its raw figures as JSON. This script writes `summary.md`: a heading line with the
date, the machine and the versions, then each table that exists, in a fixed order; and replaces
the part of README.md between `<!-- bench:begin -->` and `<!-- bench:end -->` with it.

    .cache/venv/bin/python bench/report.py [--out bench/results] [--no-readme]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ORDER = (
    ("idle_startup", "Idle and start-up"),
    ("dispatch", "Dispatch on the real server"),
    ("docker_claim_to_start", "Docker: claim to container start"),
    ("scale", "Scale against the fake Prefect API"),
    ("growth", "Growth with runs in flight"),
)
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}){memory}, {platform.system()} {platform.release()}"


def versions(poolworker: str) -> str:
    pw = subprocess.run([poolworker, "--version"], capture_output=True, text=True).stdout.strip()
    probe = ("import importlib.metadata as m\n"
             "for p in ('prefect', 'prefect-docker', 'prefect-kubernetes'):\n"
             "    try: print(p, m.version(p))\n"
             "    except m.PackageNotFoundError: pass\n")
    py = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout
    return "; ".join([pw or "poolworker (version unknown)", *py.strip().splitlines()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--poolworker", default=str(REPO / "build" / "bin" / "poolworker"))
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)

    parts = [f"Measured {dt.date.today().isoformat()} on {machine()}; {versions(args.poolworker)}.",
             "Reproduce with `bench/run.sh` (tables in `bench/results/*.md`, raw figures in "
             "`bench/results/*.json`)."]
    for name, title in ORDER:
        table = out / f"{name}.md"
        if table.exists():
            parts.append(f"#### {title}\n\n{table.read_text().strip()}")
    summary = "\n\n".join(parts) + "\n"
    (out / "summary.md").write_text(summary)
    print(summary)

    if not args.no_readme:
        readme = REPO / "README.md"
        text = readme.read_text()
        if BEGIN not in text or END not in text:
            raise SystemExit(f"README.md has no {BEGIN} ... {END} section to fill")
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(f"{head}{BEGIN}\n{summary}{END}{tail}")


if __name__ == "__main__":
    main()
