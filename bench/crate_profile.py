"""Share of the CPU samples in `perf.data` whose machine code each crate emitted.

A generic function runs as the code of the crate that instantiated it, at that crate's
opt-level, so the samples are attributed by address to the object file that lld's link map
names for it, not by the symbol's path. Usage: crate_profile.py BINARY LINK_MAP PERF_DATA [TOP]
"""
import bisect
import collections
import re
import subprocess
import sys

binary, link_map, perf_data = sys.argv[1:4]
top = int(sys.argv[4]) if len(sys.argv) > 4 else 50

# lld's map: "VMA LMA Size Align  <object>:(<input section>)" for each input section.
section = re.compile(r"^\s*([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\d+\s{2,}(\S.*?):\((\.text[^)]*)\)\s*$")


def crate_of(obj):
    m = re.search(r"lib([A-Za-z0-9_]+)-[0-9a-f]+\.rlib\(", obj) or re.search(r"/([A-Za-z0-9_]+)-[0-9a-f]+\.[^/]*rcgu\.o", obj)
    return m.group(1) if m else obj.rsplit("/", 1)[-1]


ranges = []
with open(link_map, errors="replace") as f:
    for line in f:
        m = section.match(line)
        if m and int(m.group(2), 16):
            start = int(m.group(1), 16)
            ranges.append((start, start + int(m.group(2), 16), crate_of(m.group(3))))
ranges.sort()
starts = [r[0] for r in ranges]

nm = subprocess.run(["nm", "--defined-only", binary], capture_output=True, text=True, check=True).stdout
address = {}
for line in nm.splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1] in "tTwW":
        address.setdefault(parts[2], int(parts[0], 16))
if not address:
    sys.exit(f"{binary} has no symbols: build it with the profile's strip = false")

samples = subprocess.run(["perf", "script", "-i", perf_data, "-F", "ip,sym,symoff,dso", "--no-demangle"],
                         capture_output=True, text=True, check=True).stdout
count = collections.Counter()
total = 0
for line in samples.splitlines():
    line = line.strip()
    if not line:
        continue
    total += 1
    m = re.match(r"[0-9a-f]+\s+(\S+?)\+0x([0-9a-f]+)\s+\((.*)\)", line)
    if not m or m.group(3) != binary and not m.group(3).endswith("/parstat"):
        # Outside the binary: the kernel, libc, the dynamic loader.
        dso = line.rsplit("(", 1)[-1].rstrip(")") if "(" in line else "?"
        count["(" + dso.rsplit("/", 1)[-1] + ")"] += 1
        continue
    a = address.get(m.group(1))
    if a is None:
        count["(symbol not in nm)"] += 1
        continue
    a += int(m.group(2), 16)
    i = bisect.bisect_right(starts, a) - 1
    count[ranges[i][2] if i >= 0 and a < ranges[i][1] else "(not in the map)"] += 1

print(f"{total} samples")
for crate, n in count.most_common(top):
    print(f"{100 * n / total:6.2f}%  {crate}")
