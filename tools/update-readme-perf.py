#!/usr/bin/env python3
"""Puts the latest benchmark run into the README: the text between the perf markers becomes
bench-out/report.md verbatim, and the plots are copied to docs/perf/. Run after `make bench`."""
import pathlib
import shutil

root = pathlib.Path(__file__).resolve().parent.parent
out = root / "bench-out"
perf = root / "docs" / "perf"
perf.mkdir(parents=True, exist_ok=True)
for name in ("control-plane.svg", "data-plane.svg", "control-plane.csv", "data-plane.csv", "report.md"):
    shutil.copy(out / name, perf / name)
report = (out / "report.md").read_text()
readme = root / "README.md"
text = readme.read_text()
begin, end = "<!-- perf:begin -->", "<!-- perf:end -->"
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
block = (
    f"{begin}\n{report.rstrip()}\n\n"
    "![Cold sync time vs services](docs/perf/control-plane.svg)\n\n"
    "![Connection latency vs services](docs/perf/data-plane.svg)\n"
    f"{end}"
)
readme.write_text(head + block + tail)
print("README performance section updated from", out / "report.md")
