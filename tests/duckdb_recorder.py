"""Test helper: record what a DuckDB-based reader hands to Python and where its joins build.

``with recording(monkeypatch, module) as recs:`` replaces ``module.duckdb_session`` by one whose
connections are :class:`Recorder` proxies; each records the row counts fetched into Python, the
sizes of registered tables and the build-side row count of every hash join (from DuckDB's profile),
so a test can assert that per-record data stays in DuckDB and no join builds on the records.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import pytest


class Recorder:
    """A DuckDB connection proxy that records what crosses into Python and each query's plan."""

    def __init__(self, con: Any) -> None:
        self._con = con
        self.fetched_rows: list[int] = []
        self.registered_rows: list[int] = []
        self.join_build_rows: list[int] = []
        self._pending = False
        con.execute("SET enable_profiling = 'no_output'")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)

    def _collect(self) -> None:
        if not self._pending:
            return
        self._pending = False
        prof = json.loads(self._con.get_profiling_information(format="json"))
        stack = list(prof.get("operator", prof.get("children", [])))
        while stack:
            op = stack.pop()
            kids = op.get("children", [])
            if "HASH_JOIN" in str(op.get("type", op.get("operator_type", ""))) and len(kids) == 2:
                build = kids[1]  # DuckDB builds the hash table on the right child
                self.join_build_rows.append(
                    int(build.get("intermediate_rows", build.get("operator_cardinality", 0))))
            stack.extend(kids)

    def execute(self, *args: Any) -> Recorder:
        self._collect()
        self._con.execute(*args)
        self._pending = True
        return self

    def _fetched(self, n: int) -> None:
        self.fetched_rows.append(n)
        self._collect()

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows = self._con.fetchall()
        self._fetched(len(rows))
        return rows

    def fetchdf(self) -> pd.DataFrame:
        df = self._con.fetchdf()
        self._fetched(len(df))
        return df

    def fetchnumpy(self) -> dict[str, np.ndarray]:
        cols = self._con.fetchnumpy()
        self._fetched(max((len(v) for v in cols.values()), default=0))
        return cols

    def register(self, name: str, obj: Any) -> Any:
        self.registered_rows.append(len(obj))
        return self._con.register(name, obj)


@contextlib.contextmanager
def recording(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> Iterator[list[Recorder]]:
    """Patch ``module.duckdb_session`` so that every session it opens is recorded."""
    made: list[Recorder] = []
    real = module.duckdb_session

    @contextlib.contextmanager
    def session(**kw: Any) -> Iterator[Recorder]:
        with real(**kw) as con:
            rec = Recorder(con)
            made.append(rec)
            yield rec
            rec._collect()

    monkeypatch.setattr(module, "duckdb_session", session)
    yield made


def assert_records_stay_in_duckdb(recs: list[Recorder], active_slots: int, n_stations: int,
                                  n_records: int) -> None:
    """One reader session; what reached Python is at most the per-slot rows and the station table,
    and no hash join was built on the per-record data."""
    assert len(recs) == 1
    rec = recs[0]
    assert rec.fetched_rows and max(rec.fetched_rows) <= active_slots < n_records / 5
    assert max(rec.registered_rows) <= n_stations
    assert rec.join_build_rows, "expected the station join to be profiled"
    assert max(rec.join_build_rows) < n_records / 5, rec.join_build_rows
