"""Benchmark reading an admin table's quota and enabled values, row by row, against ``int()``.

Run it by hand from the project root (it is not part of the test suite)::

    .venv/bin/python benchmarks/sql_values.py [--rows 200000] [--repeat 5]

The SQL store reads every row of the admin's table at every scan and every refresh of the
daemon (each ``refresh_seconds``). Values come as tables keep them (decimals, ``Y``/``N``,
text); most are plain integers. It times, best of ``--repeat``, ``SqlStore._amount`` (quota
times ``quota_unit``) and ``_flag`` (enabled) over ``--rows`` rows of integers, and of decimals,
against the ``int(value) * unit`` and ``bool(int(value))`` the store used before it read other
spellings (the baseline), and prints each ratio.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from _harness import best

from quotagate.store.sql import SqlStore, _flag

UNIT = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    integers: list[dict[str, Any]] = [{"quota": 1000 + i, "enabled": 1} for i in range(args.rows)]
    decimals: list[dict[str, Any]] = [{"quota": Decimal("0.5"), "enabled": "Y"} for _ in range(args.rows)]

    def baseline() -> None:
        for row in integers:
            _ = int(row["quota"] or 0) * UNIT, bool(int(row["enabled"]))

    def read(rows: list[dict[str, Any]]) -> Callable[[], None]:
        def go() -> None:
            odd: list[tuple[str, str, object, str]] = []
            for row in rows:
                _ = SqlStore._amount(row, "quota", UNIT, "a@example.org", odd), _flag(row["enabled"])

        return go

    base = best(args.repeat, baseline)
    print(f"{args.rows} rows, best of {args.repeat}")
    print(f"  int() as before (baseline)   {base * 1e3:8.1f} ms")
    for label, rows in (("integers", integers), ("decimals and Y/N", decimals)):
        took = best(args.repeat, read(rows))
        print(f"  read now: {label:<18} {took * 1e3:8.1f} ms  {took / base:5.1f}x")


if __name__ == "__main__":
    main()
