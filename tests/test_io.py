"""Output locations are checked before work; killed stages leave nothing behind for long; written
files follow the user's umask; the package's log is copied into run directories."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mstdiff.errors import InputError
from mstdiff.io import atomic_dir, atomic_write_text, check_output_dir, log_to_file, remove_stale_partials


def test_output_path_that_is_a_file_is_reported_as_a_file(tmp_path):
    f = tmp_path / "out"
    f.write_text("x")
    with pytest.raises(InputError, match="is a file, not a directory"):
        check_output_dir(f)
    with pytest.raises(InputError, match="is a file"):
        check_output_dir(f / "sub")
    with pytest.raises(InputError, match="already exists"):
        check_output_dir(tmp_path)
    assert check_output_dir(tmp_path, overwrite=True) == tmp_path
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"


def test_full_disk_is_reported_before_work(tmp_path, monkeypatch):
    import shutil

    from mstdiff import io

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 1024))
    with pytest.raises(InputError, match="full"):
        io.check_output_dir(tmp_path / "out")


def test_write_errors_become_input_errors(tmp_path, monkeypatch):
    import errno

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(InputError, match="disk is full"):
        atomic_write_text(tmp_path / "a.txt", "hello")
    assert not list(tmp_path.iterdir())  # no temp file left


def test_stage_killed_with_kill_9_leaves_a_partial_that_the_next_run_removes(tmp_path):
    out = tmp_path / "stage"
    code = (f"import os\nfrom mstdiff.io import atomic_dir\n"
            f"with atomic_dir({str(out)!r}) as tmp:\n"
            f"    (tmp / 'half').write_text('x')\n    os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -9
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert len(left) == 1 and not out.exists()
    with atomic_dir(out) as tmp:
        (tmp / "done").write_text("y")
    assert [p.name for p in tmp_path.iterdir()] == ["stage"]


def test_partial_of_a_running_process_is_kept(tmp_path):
    live = tmp_path / f".stage.{os.getpid()}.abc.partial"
    live.mkdir()
    dead = tmp_path / ".stage.999999999.abc.partial"  # no such pid
    dead.mkdir()
    other = tmp_path / ".other.999999999.abc.partial"
    other.mkdir()
    assert remove_stale_partials(tmp_path / "stage") == [dead]
    assert live.exists() and other.exists()


def test_files_and_directories_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "d") as tmp:
            atomic_write_text(tmp / "f.txt", "x")
        assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
        assert stat.S_IMODE((tmp_path / "d" / "f.txt").stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_write_text(tmp_path / "private.txt", "x")
        assert stat.S_IMODE((tmp_path / "private.txt").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_log_to_file_gets_the_package_log_even_when_the_terminal_is_quiet(tmp_path):
    log = logging.getLogger("mstdiff.some.stage")
    with log_to_file(tmp_path / "log.txt"):
        log.info("stage X started")
        log.warning("something odd")
    log.info("after the block")
    text = (tmp_path / "log.txt").read_text()
    assert "stage X started" in text and "something odd" in text and "after the block" not in text


def test_cli_run_writes_log_and_a_finished_run_is_not_recomputed(tmp_path):
    from click.testing import CliRunner

    from mstdiff.cli import cli

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    sets = ["--set", "data.options={n_users: 30, n_stations: 20, days: 1}", "--set", "train.epochs=1",
            "--set", "vqvae.epochs=1", "--set", "kg.embed.epochs=1", "--set", "train.batch_size=16",
            "--set", "model.denoiser.d_model=16", "--set", "model.gaussian.num_steps=4",
            "--set", "evaluate.plots=false", "--set", "train.progress=false",
            "--set", "model.denoiser.use_vqvae=false"]
    res = CliRunner().invoke(cli, ["run", str(repo / "configs" / "demo.yaml"), "--out", str(out), *sets])
    assert res.exit_code == 0, res.output
    log = (out / "log.txt").read_text()
    assert "stage prepare" in log and "stage evaluate" in log
    stamp = (out / "evaluate" / "metrics.json").stat().st_mtime_ns
    again = CliRunner().invoke(cli, ["run", str(repo / "configs" / "demo.yaml"), "--out", str(out), *sets])
    assert again.exit_code == 0, again.output
    assert (out / "evaluate" / "metrics.json").stat().st_mtime_ns == stamp  # not recomputed
    assert "| mstdiff" in again.output  # the table is still printed
    assert "nothing to do" in (out / "log.txt").read_text()


def test_unwritable_parent_is_reported_before_work(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda p, mode: False)  # as a read-only mount would answer
    with pytest.raises(InputError, match="read-only or no permission"):
        check_output_dir(tmp_path / "out")
