#!/usr/bin/env python3
"""Detection latency against the limit over many `meshpay-sim run --json`
reports (for example one scenario over many seeds).

    python3 simulator/scripts/detection.py DIR

reads every DIR/*.json and prints, for the stages 50 %, 90 % and all
devices, three statistics of measured latency against the limit:

- the median over conflicts of each conflict's ratio measured / limit;
- the pooled ratio of medians: the median measured latency over every
  conflict divided by the median limit over every conflict;
- the median and the largest of the per-report ratios (each report's own
  ratio of medians, as its summary prints it).

Conflicts whose limit is 0 s at a stage (the lab's, where the payment
exchange itself is the detection) are left out of the per-conflict ratios.
"""

import json
import pathlib
import statistics
import sys

STAGES = [("half", "50 %"), ("ninety", "90 %"), ("all", "all")]


def main(directory):
    reports = [json.loads(p.read_text()) for p in sorted(pathlib.Path(directory).glob("*.json"))]
    if not reports:
        sys.exit(f"no *.json reports in {directory}")
    conflicts = sum(r["detection"]["conflicts"] for r in reports)
    print(f"{len(reports)} reports, {conflicts} conflicts")
    for key, name in STAGES:
        ratios, measured, limit, per_report = [], [], [], []
        for r in reports:
            ratio = r["detection"]["ratio"][key]
            if ratio is not None:
                per_report.append(ratio)
            for c in r["detection"]["per_conflict"]:
                m, l = c["measured"][key], c["limit"][key]
                if m is None or l is None:
                    continue
                measured.append(m)
                limit.append(l)
                if l > 0:
                    ratios.append(m / l)
        line = f"{name:>5}:"
        if ratios:
            line += f" median over conflicts {statistics.median(ratios):.3f}x;"
        if measured and statistics.median(limit) > 0:
            line += (
                f" pooled {statistics.median(measured) / statistics.median(limit):.2f}x"
                f" ({statistics.median(measured):.1f} s / {statistics.median(limit):.1f} s);"
            )
        if per_report:
            line += f" per report median {statistics.median(per_report):.2f}x, largest {max(per_report):.2f}x"
        print(line)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
