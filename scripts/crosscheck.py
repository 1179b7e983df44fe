#!/usr/bin/env python3
"""Reads Duet's lake with a Delta reader Duet did not write (the `deltalake` Python package)
and checks it against expectations produced by the end-to-end test.

usage: crosscheck.py LAKE_DIR EXPECTED_JSON

EXPECTED_JSON: {"raw": {source: rows}, "views": {view: {"dims": [path, ...],
                "rows": [{"bucket_ms": ms, "dims": [value|null, ...], "values": {measure: value}}]}}}
Exits 1 with a list of differences if anything differs.
"""
import json
import os
import sys

from deltalake import DeltaTable


def main() -> int:
    lake, expected_file = sys.argv[1], sys.argv[2]
    with open(expected_file) as f:
        expected = json.load(f)
    problems = []
    checked = 0
    for source, rows in expected["raw"].items():
        dt = DeltaTable(f"{lake}/raw/{source}")
        n = dt.to_pyarrow_table().num_rows
        checked += 1
        if n != rows:
            problems.append(f"raw/{source}: {n} rows, expected {rows}")
        if dt.metadata().partition_columns != ["event_date", "event_hour"]:
            problems.append(f"raw/{source}: partitions {dt.metadata().partition_columns}")
    for view, spec in expected["views"].items():
        dt = DeltaTable(f"{lake}/views/{view}")
        checked += 1
        cols = [d.replace(".", "_") for d in spec["dims"]]
        got = {}
        for r in dt.to_pyarrow_table().to_pylist():
            key = (int(r["bucket"].timestamp() * 1000), tuple(r[c] for c in cols))
            got[key] = r
        want = {(r["bucket_ms"], tuple(r["dims"])): r["values"] for r in spec["rows"]}
        if set(got) != set(want):
            problems.append(f"views/{view}: buckets {sorted(set(got) ^ set(want))[:5]} differ")
            continue
        for key, values in want.items():
            for name, v in values.items():
                g = got[key][name]
                if isinstance(v, list):
                    g = json.loads(g)
                elif isinstance(v, str):
                    g = str(g)  # a decimal(38, s) column: Python Decimal, exact
                if g != v:
                    problems.append(f"views/{view} {key} {name}: {g!r}, expected {v!r}")
    entries = DeltaTable(f"{lake}/ledger/entries").to_pyarrow_table().to_pylist()
    checked += 1
    sealed = {e["view"] for e in entries if e["kind"] == "seal"}
    for view in expected["views"]:
        if view not in sealed:
            problems.append(f"ledger/entries: no seal for {view}")
    if problems:
        print("crosscheck: differences:\n  " + "\n  ".join(problems))
        return 1
    print(f"crosscheck: {checked} Delta tables read by deltalake (Python) match")
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # deltalake's background runtime threads can abort the interpreter's teardown
    # ("terminate called without an active exception"); the verdict is already printed.
    os._exit(code)
