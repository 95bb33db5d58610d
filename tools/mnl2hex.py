#!/usr/bin/env python3
"""Turns `nft --debug=mnl` output into one line per netlink message: `<type> <payload hex>`.

The payload is everything after the 16-byte nlmsghdr (nfgenmsg + attributes); the header's
flags and sequence number are left out because nft's dump does not show all flag bits and
sequence numbers differ per run. Used to capture the byte-exact fixtures of crates/nft-wire:

    nft --debug=mnl -f rules.nft 2>&1 | tools/mnl2hex.py > fixture.hex
"""
import re
import sys

ansi = re.compile(r"\x1b\[[0-9;]*m")
msgs, cur, typ = [], None, None
for raw in sys.stdin:
    line = ansi.sub("", raw.rstrip("\n"))
    m = re.match(r"^\|\s+(\d+)\s+\|\s+\S+\s+\|\s+\|\s+type \| flags", line)
    if m:
        typ = int(m.group(1))
        cur = bytearray()
        msgs.append((typ, cur))
        continue
    if cur is None:
        continue
    m = re.match(r"^\|(\d{5})\|([NB-])([NB-])\|(\d{5})\|", line)
    if m:
        ln, t = int(m.group(1)), int(m.group(4))
        if "N" in (m.group(2), m.group(3)):
            t |= 0x8000
        if "B" in (m.group(2), m.group(3)):
            t |= 0x4000
        cur += ln.to_bytes(2, "little") + t.to_bytes(2, "little")
        continue
    m = re.match(r"^\| ([0-9a-f]{2}) ([0-9a-f]{2}) ([0-9a-f]{2}) ([0-9a-f]{2})  \|", line)
    if m and "extra header" in line or m and "data" in line:
        cur += bytes(int(g, 16) for g in m.groups())
for typ, payload in msgs:
    print(typ, payload.hex())
