"""Preparation of a large raw log with bounded memory: time and peak RSS against the log's size.

    python benchmarks/prepare_large.py              # 10 M records, memory_limit unset and 1GB
    python benchmarks/prepare_large.py --records 1000000 10000000 --memory-limit none 1GB 256MB
    python benchmarks/prepare_large.py --source csv # the same log as a generic records CSV

For each record count: ``write_synthetic_raw_log`` writes a raw log in the Tsinghua App Usage trace
format (``user timestamp station app bytes``, one week, ``--users`` users on ``--stations``
stations; in a child process, timed separately), then, for each DuckDB ``memory_limit`` ("none" =
DuckDB's default, 80 % of RAM), another child process runs ``prepare("app-usage", raw, out,
use_poi=False, coords=stations.csv, memory_limit=..., threads=...)`` and writes the prepared dataset.
With ``--source csv`` the generating child converts the log (streaming, with DuckDB) into
``records.csv`` (``user_id,timestamp,station_id,traffic``, timestamps ``YYYYMMDDhhmmss``) beside
``stations.csv``, and the preparing child runs ``prepare("csv", records.csv, out,
stations=stations.csv, timestamp_format="%Y%m%d%H%M%S", window_minutes=10080, origin="2016-04-20",
...)`` (the generic reader, :mod:`mstdiff.data.tabular`); results go to ``prepare_large_csv``.
Peak RSS is the preparing process's own high-water mark (``VmHWM`` of ``/proc/self/status``, read by
the child at its end; ``ru_maxrss`` is kept in the JSON as a cross-check, but Linux starts it from the
parent's peak when a child is spawned, so it is only an upper bound), and the parent samples the
child's RSS from ``/proc`` every 0.1 s. Bounded memory means that the peak does not grow with the
log's size (compare with the raw file size). The child also reports its RSS right after its imports
(the fixed cost of Python, numpy, pandas and DuckDB) and the size of the output arrays, which are
necessarily in memory at the end (traffic float32 + locations int64, U x T each).

Prints a Markdown table and writes results.json and results.md under --results
(default benchmarks/results/prepare_large). The raw logs go to --out-dir (default: a new temporary
folder) and are deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO / "benchmarks" / "results" / "prepare_large"
SOURCES = ("app-usage", "csv")
RAW_NAMES = {"app-usage": "App_usage_trace.txt", "csv": "records.csv"}
CSV_OPTIONS: dict[str, Any] = {"timestamp_format": "%Y%m%d%H%M%S", "window_minutes": 7 * 1440,
                               "origin": "2016-04-20 00:00", "traffic_unit": "bytes"}
MB = 1e6


def _maxrss_bytes(ru: Any) -> int:
    """``ru_maxrss`` in bytes (Linux reports KiB, macOS bytes)."""
    return int(ru.ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def _proc_status(pid: int | str, key: str) -> int | None:
    """A ``/proc/<pid>/status`` memory field (e.g. ``VmRSS``, ``VmHWM``) in bytes; None off Linux."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def _peak_self() -> int:
    """This process's peak RSS in bytes: ``VmHWM`` (per process image), else ``ru_maxrss``."""
    hwm = _proc_status("self", "VmHWM")
    return hwm if hwm is not None else _maxrss_bytes(resource.getrusage(resource.RUSAGE_SELF))


def generate(
    raw: Path, n: int, users: int, stations: int, seed: int, source: str = "app-usage"
) -> dict[str, Any]:
    from mstdiff.data.synthetic import write_synthetic_raw_log

    trace = raw if source == "app-usage" else raw.parent / RAW_NAMES["app-usage"]
    info = write_synthetic_raw_log(trace, n, n_users=users, n_stations=stations, seed=seed)
    seconds = float(info["seconds"])
    if source == "csv":  # the same records as a generic CSV table (DuckDB streams the conversion)
        import duckdb

        from mstdiff.data.binning import sql_str

        t0 = time.perf_counter()
        with duckdb.connect() as con:
            con.execute(f"""
                COPY (SELECT user_id, timestamp, station_id, traffic
                      FROM read_csv({sql_str(trace)}, delim=' ', header=false, auto_detect=false,
                                    columns={{'user_id': 'VARCHAR', 'timestamp': 'VARCHAR',
                                             'station_id': 'VARCHAR', 'app': 'VARCHAR',
                                             'traffic': 'VARCHAR'}}))
                TO {sql_str(raw)} (HEADER, DELIMITER ',')
            """)
        trace.unlink()
        seconds += time.perf_counter() - t0
    return {"generation_s": seconds, "generation_peak_rss_mb": _peak_self() / MB}


# ---------------------------------------------------------------------------------------- child
def worker(raw: Path, out: Path, memory_limit: str | None, threads: int | None,
           source: str = "app-usage") -> dict[str, Any]:
    """Prepare ``raw`` in this process; returns what the parent cannot see from outside."""
    import duckdb
    import numpy  # noqa: F401  (in the baseline below, as are pandas and the reader)

    import mstdiff.data.appusage
    import mstdiff.data.tabular
    from mstdiff.data.prepare import prepare

    rss_imports = _peak_self()
    if source == "csv":
        reader = mstdiff.data.tabular.__file__
        opts: dict[str, Any] = {"stations": raw.parent / "stations.csv", **CSV_OPTIONS}
    else:
        reader = mstdiff.data.appusage.__file__
        opts = {"use_poi": False, "coords": raw.parent / "stations.csv"}
    if memory_limit is not None:
        opts["memory_limit"] = memory_limit
    if threads is not None:
        opts["threads"] = threads
    t0 = time.perf_counter()
    ds = prepare(source, raw, out, overwrite=True, **opts)
    total_s = time.perf_counter() - t0
    c = ds.meta["counts"]
    return {
        "duckdb": duckdb.__version__,
        "reader_file": reader,
        "prepare_s": total_s,  # reading + binning + writing the dataset folder
        "reader_s": float(ds.meta["prepare_seconds"]),  # reading + binning only
        "rss_after_imports_mb": rss_imports / MB,
        "U": int(ds.traffic.shape[0]),
        "T": int(ds.T),
        "N": int(ds.n_stations),
        "output_arrays_mb": (ds.traffic.nbytes + ds.locations.nbytes) / MB,
        "records_read": int(c["records_read"]),
        "records_kept": int(c["records_kept"]),
        "active_slots": int(c["active_slots"]),
        "peak_rss_mb": _peak_self() / MB,  # with ds (the output) still alive
    }


# ---------------------------------------------------------------------------------------- parent
def run_child(worker_args: list[str], timeout: float) -> dict[str, Any]:
    """Run this script as a worker; its JSON result plus rusage (wait4) and an RSS timeline (/proc)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *worker_args]
    samples: list[tuple[float, float]] = []
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                r = _proc_status(proc.pid, "VmRSS")
                if r is not None:
                    samples.append((time.perf_counter() - t0, r / MB))
                done.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)  # rusage of this child alone
        finally:
            timer.cancel()
            done.set()
            sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        log.seek(0)
        text = log.read()
    if proc.returncode != 0:
        return {"failed": f"exit {proc.returncode}: {text.strip()[-500:]}"}
    res = json.loads(text.strip().splitlines()[-1])
    res.update(
        child_wall_s=wall,
        child_cpu_s=ru.ru_utime + ru.ru_stime,
        ru_maxrss_mb=_maxrss_bytes(ru) / MB,
        sampled_peak_rss_mb=max((s[1] for s in samples), default=None),
        rss_timeline=[[round(t, 2), round(m, 1)] for t, m in samples[::5]],  # every 0.5 s
    )
    return res


def _fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


HEADER = ("| records | raw file MB | generation s | preparation s | records/s | peak RSS MB "
          "| RSS after imports MB | memory_limit | prepared U / N / T | output arrays MB |\n"
          "|---:|---:|---:|---:|---:|---:|---:|:---|:---|---:|")


def table_row(r: dict[str, Any]) -> str:
    head = (f"| {_fmt(r['records'])} | {_fmt(r['raw_file_mb'])} | {_fmt(r['generation_s'], 2)} | ")
    if "failed" in r:
        return head + f"failed: {r['failed'][:120]} | | | {r['memory_limit']} | | |"
    return head + (
        f"{_fmt(r['prepare_s'], 2)} | {_fmt(int(round(r['records'] / r['prepare_s'])))} | "
        f"{_fmt(r['peak_rss_mb'], 0)} | {_fmt(r['rss_after_imports_mb'], 0)} | {r['memory_limit']} | "
        f"{r['U']:,} / {r['N']:,} / {r['T']} | {_fmt(r['output_arrays_mb'], 2)} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, nargs="+", default=[10_000_000], help="raw log sizes")
    ap.add_argument("--source", choices=SOURCES, default="app-usage",
                    help="app-usage: the App Usage trace; csv: the same records as a generic CSV table")
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--stations", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory-limit", nargs="+", default=["none", "1GB"],
                    help='DuckDB memory_limit values; "none" leaves it unset')
    ap.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: its own)")
    ap.add_argument("--out-dir", type=Path, default=None, help="where the raw logs go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the raw logs and prepared folders")
    ap.add_argument("--results", type=Path, default=None,
                    help="results.json / results.md folder (default: benchmarks/results/prepare_large, "
                    "prepare_large_csv for --source csv)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per preparation")
    ap.add_argument("--note", action="append", default=[], help="a line added under the table")
    ap.add_argument("--worker", choices=("generate", "prepare"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--raw", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--prepared", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "generate":
        res = generate(args.raw, args.records[0], args.users, args.stations, args.seed, args.source)
        print(json.dumps(res), flush=True)
        return
    if args.worker == "prepare":
        ml = None if args.memory_limit[0].lower() == "none" else args.memory_limit[0]
        print(json.dumps(worker(args.raw, args.prepared, ml, args.threads, args.source)), flush=True)
        return
    if args.results is None:
        args.results = DEFAULT_RESULTS if args.source == "app-usage" else DEFAULT_RESULTS.with_name(
            "prepare_large_csv")

    made_tmp = args.out_dir is None
    base = Path(tempfile.mkdtemp(prefix="mstdiff-prepare-large-")) if made_tmp else args.out_dir
    base.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    print(HEADER, flush=True)
    try:
        for n in args.records:
            folder = base / f"records_{n}"
            raw = folder / RAW_NAMES[args.source]
            gen = run_child(["--worker", "generate", "--raw", str(raw), "--records", str(n), "--users",
                             str(args.users), "--stations", str(args.stations), "--seed", str(args.seed),
                             "--source", args.source], args.timeout)
            if "failed" in gen:
                raise SystemExit(f"generating {n} records failed: {gen['failed']}")
            common = {"source": args.source, "records": n, "users": args.users, "stations": args.stations,
                      "seed": args.seed,
                      "raw_file_mb": raw.stat().st_size / MB, "generation_s": gen["generation_s"],
                      "generation_peak_rss_mb": gen["generation_peak_rss_mb"]}
            for ml in args.memory_limit:
                limit = None if ml.lower() == "none" else ml
                cmd = ["--worker", "prepare", "--raw", str(raw), "--prepared", str(folder / f"prepared_{ml}"),
                       "--memory-limit", ml, "--source", args.source]
                if args.threads is not None:
                    cmd += ["--threads", str(args.threads)]
                res = run_child(cmd, args.timeout)
                row = {**common, "memory_limit": limit or "unset", "threads": args.threads or "default",
                       **res}
                rows.append(row)
                print(table_row(row), flush=True)
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    finally:
        if made_tmp and not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
               "loadavg_end": os.getloadavg()}
    try:
        machine["ram_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError):  # pragma: no cover - not POSIX
        pass
    command = shlex.join(["python", "benchmarks/prepare_large.py", *sys.argv[1:]])
    args.results.mkdir(parents=True, exist_ok=True)
    payload = {"command": command.strip(), "date": dt.date.today().isoformat(), "machine": machine,
               "results": rows}
    (args.results / "results.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    lines = [
        f"<!-- {payload['date']}, {machine['cpus']} CPU(s), {machine.get('ram_gb', '?')} GB RAM, "
        f"duckdb {next((r['duckdb'] for r in rows if 'duckdb' in r), '?')}:\n     {command.strip()} -->",
        "# Preparation of large raw logs (App Usage format, synthetic)" if args.source == "app-usage"
        else "# Preparation of large records tables (generic CSV with a station table, synthetic)",
        "",
        HEADER,
        *[table_row(r) for r in rows],
        "",
        f"- preparation s: `prepare(\"{args.source}\", ...)` in a child process, reading, binning and "
        "writing the dataset folder; records/s = records / preparation s.",
        "- peak RSS: the preparing child's own high-water mark (`VmHWM`), with the prepared dataset "
        "still in memory; RSS after imports: its peak right after importing numpy, pandas, DuckDB and "
        "mstdiff (the fixed part).",
        "- output arrays: traffic (float32) + locations (int64), U x T each, which are in memory at the end.",
        "- memory_limit: DuckDB's; unset = its default (80 % of RAM).",
        *[f"- {note}" for note in args.note],
        "",
    ]
    (args.results / "results.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"\nwrote {args.results / 'results.json'} and results.md")


if __name__ == "__main__":
    main()
