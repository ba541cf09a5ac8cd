"""Bad raw files: every line is a record or a counted problem, and errors are in the package's words.

The same broken inputs go through the three record readers (Shanghai Telecom, App Usage, generic
CSV): binary data, UTF-16 text, bytes that are not UTF-8, NUL bytes, over-long lines, wrong field
counts, blank lines, a duplicated column name. Each ends in a dataset whose ``records_read`` is the
number of data lines, or in an :class:`InputError` that names the file and line and holds none of
DuckDB's own phrases.
"""

from __future__ import annotations

import functools
import re

import pytest
from raw_inputs import CSV_HEADER, CSV_LINES, READERS, assert_package_words, write_csv

import mstdiff.data.binning as binning
from mstdiff.data.textfile import LINE_LIMIT, reconcile_counts, scan_text
from mstdiff.errors import InputError

NAMES = ["shanghai", "app-usage", "csv"]


def _run(tmp_path, reader, body):
    write, prepare, _, _ = READERS[reader]
    path = write(tmp_path, body)
    return path, prepare


def _body(reader, lines):
    _, _, header, _ = READERS[reader]
    return header + b"\n".join(lines) + b"\n"


def _error(tmp_path, reader, body, pattern):
    path, prepare = _run(tmp_path, reader, body)
    with pytest.raises(InputError, match=pattern) as info:
        prepare(tmp_path)
    msg = str(info.value)
    assert str(path) in msg, msg
    assert_package_words(msg)
    return msg


def _line_of(msg):
    m = re.search(r", line (\d+)", msg)
    return int(m.group(1)) if m else None


@pytest.mark.parametrize("reader", NAMES)
def test_long_last_line_is_an_error_naming_its_line(tmp_path, reader):
    lines = READERS[reader][3]
    long = lines[0] + b"x" * (LINE_LIMIT + 10)
    msg = _error(tmp_path, reader, _body(reader, [*lines, long]), "longer than the limit")
    header = 1 if reader == "csv" else 0
    assert _line_of(msg) == len(lines) + 1 + header


def test_a_huge_last_line_dropped_by_the_csv_scanner_is_caught_by_the_count(tmp_path, monkeypatch):
    """With the line limit lifted, DuckDB (2.0) drops a 40 MB last line without a word: the line
    count of the scan catches it (the 401-lines-read-as-400 report)."""
    monkeypatch.setattr(binning, "scan_text", functools.partial(scan_text, limit=1 << 30))
    lines = READERS["shanghai"][3] * 40
    long = lines[0] + b"x" * (40 << 20)
    body = b"\n".join([*lines, long]) + b"\n"
    msg = _error(tmp_path, "shanghai", body, r"records were read from 481 non-blank data lines: 1 line")
    assert "lost" in msg


@pytest.mark.parametrize("reader", NAMES)
@pytest.mark.parametrize("crlf", [False, True])
def test_blank_lines_are_counted_and_records_read_equals_lines(tmp_path, reader, crlf):
    lines = READERS[reader][3]
    body = _body(reader, [*lines[:3], b"", b"", *lines[3:], b""])  # 3 blank lines
    if crlf:
        body = body.replace(b"\n", b"\r\n")
    _, prepare = _run(tmp_path, reader, body)
    ds = prepare(tmp_path)
    c = ds.meta["counts"]
    n_lines = body.count(b"\n") - (1 if reader == "csv" else 0)
    assert c["records_read"] == n_lines == len(lines) + 3
    assert c["records_dropped"]["blank_line"] == 3
    assert c["records_read"] == c["records_kept"] + sum(c["records_dropped"].values())


@pytest.mark.parametrize("reader", NAMES)
@pytest.mark.parametrize("encoding,bom", [("utf-16", True), ("utf-16-le", False), ("utf-16-be", False),
                                          ("utf-32", True)])
def test_utf16_and_utf32_text_is_named(tmp_path, reader, encoding, bom):
    text = _body(reader, READERS[reader][3]).decode()
    msg = _error(tmp_path, reader, text.encode(encoding), "UTF-(16|32).*not UTF-8")
    assert "iconv" in msg
    if not bom:
        assert encoding.upper() in msg


@pytest.mark.parametrize("reader", NAMES)
@pytest.mark.parametrize("blob,pattern", [
    (bytes(range(256)) * 40, "not a text file: binary data"),
    (b"\x1f\x8b\x08\x00" + bytes(200), "gzip"),
    (b"PAR1" + bytes(100) + b"PAR1", "Parquet"),
    (b"PK\x03\x04" + bytes(100), "ZIP"),
])
def test_binary_files_are_not_text(tmp_path, reader, blob, pattern):
    _error(tmp_path, reader, blob, pattern)


@pytest.mark.parametrize("reader", NAMES)
def test_nul_byte_and_legacy_encoding_name_the_line(tmp_path, reader):
    lines = list(READERS[reader][3])
    header = 1 if reader == "csv" else 0
    bad = lines[4][:-1] + b"\x00" + lines[4][-1:]
    msg = _error(tmp_path, reader, _body(reader, [*lines[:4], bad, *lines[5:]]), "NUL byte")
    assert _line_of(msg) == 5 + header
    gbk = lines[6][:3] + "用户".encode("gbk") + lines[6][3:]
    msg = _error(tmp_path, reader, _body(reader, [*lines[:6], gbk, *lines[7:]]), "not UTF-8 text")
    assert _line_of(msg) == 7 + header and "GBK" in msg


@pytest.mark.parametrize("reader", NAMES)
@pytest.mark.parametrize("extra", [b"", b"\tx", b" x", b",x"])
def test_wrong_field_count_names_the_line(tmp_path, reader, extra):
    lines = list(READERS[reader][3])
    header = 1 if reader == "csv" else 0
    cut = lines[7].rsplit(b" " if reader == "app-usage" else b"\t" if reader == "shanghai" else b",", 1)[0]
    bad = cut + extra if extra else cut
    path, prepare = _run(tmp_path, reader, _body(reader, [*lines[:7], bad, *lines[8:]]))
    try:
        ds = prepare(tmp_path)
    except InputError as err:
        msg = str(err)
        assert_package_words(msg)
        assert _line_of(msg) == 8 + header, msg
        assert str(path) in msg
    else:  # a field glued onto the last one (e.g. " x" inside a CSV user id) is a valid record
        assert ds.meta["counts"]["records_read"] == len(lines)


@pytest.mark.parametrize("reader", NAMES)
def test_empty_file(tmp_path, reader):
    _error(tmp_path, reader, b"", "no rows|empty")
    _error(tmp_path, reader, READERS[reader][2] + b"\n\n", "no rows|empty")


def test_duplicate_and_reserved_column_names(tmp_path):
    body = CSV_HEADER + b",traffic\n" + b"\n".join(line + b",1" for line in CSV_LINES) + b"\n"
    msg = _error(tmp_path, "csv", body, "duplicate column name 'traffic'")
    assert _line_of(msg) == 1
    body = CSV_HEADER + b",filename\n" + b"\n".join(line + b",1" for line in CSV_LINES) + b"\n"
    _error(tmp_path, "csv", body, "'filename', a name the reader uses itself")


@pytest.mark.parametrize("reader", NAMES)
def test_mixed_line_breaks_name_the_line(tmp_path, reader):
    lines = list(READERS[reader][3])
    header = 1 if reader == "csv" else 0
    body = _body(reader, [*lines[:4], lines[4] + b"\r", *lines[5:]])
    msg = _error(tmp_path, reader, body, "mixes line breaks")
    assert _line_of(msg) == 5 + header
    body = _body(reader, [*lines[:4], lines[4][:3] + b"\r" + lines[4][3:], *lines[5:]])
    msg = _error(tmp_path, reader, body, "carriage return")
    assert _line_of(msg) == 5 + header


def test_empty_column_name_is_read(tmp_path):
    body = CSV_HEADER + b",\n" + b"\n".join(line + b"," for line in CSV_LINES) + b"\n"
    write_csv(tmp_path, body)
    ds = READERS["csv"][1](tmp_path)
    assert ds.meta["counts"]["records_read"] == len(CSV_LINES)


def test_unbalanced_quote_and_quoted_line_break(tmp_path):
    lines = list(CSV_LINES)
    body = CSV_HEADER + b"\n" + b"\n".join([*lines[:5], b'"' + lines[5], *lines[6:]]) + b"\n"
    msg = _error(tmp_path, "csv", body, "quote")
    assert _line_of(msg) == 7
    body = CSV_HEADER + b"\n" + b"\n".join([*lines, b'"u\n9",2016-04-20 01:00:00,s1,5']) + b"\n"
    write_csv(tmp_path, body)
    ds = READERS["csv"][1](tmp_path)  # one record over two lines: a record, not a loss
    assert ds.meta["counts"]["records_read"] == len(lines) + 1


def test_station_tables_get_the_same_checks(tmp_path):
    from mstdiff.data.appusage import read_poi_table
    from mstdiff.data.shanghai import read_station_table
    from mstdiff.data.tabular import read_station_table as read_csv_stations

    (tmp_path / "st.csv").write_text("station_id,lat,lon\ns1,31.2,121.4\n", encoding="utf-16")
    for fn in (read_station_table, read_csv_stations, read_poi_table):
        with pytest.raises(InputError, match="UTF-16") as info:
            fn(tmp_path / "st.csv")
        assert_package_words(str(info.value))
    (tmp_path / "dup.csv").write_text("station_id,lat,lon,lat\ns1,31.2,121.4,1\n")
    with pytest.raises(InputError, match="duplicate column name 'lat'"):
        read_csv_stations(tmp_path / "dup.csv")


def test_scan_counts_lines_like_splitlines_across_blocks(tmp_path, monkeypatch):
    import mstdiff.data.textfile as textfile

    monkeypatch.setattr(textfile, "BLOCK", 7)  # every line break and \r\n pair crosses a block edge
    for body in (b"ab\r\n\r\ncd\r\n\r\nefg\r\n\r\nh", b"ab\n\ncd\n\nefgh\n\nh"):
        (tmp_path / "f.txt").write_bytes(body)
        scan = textfile.scan_text(tmp_path / "f.txt", limit=10)
        assert scan.lines == len(body.decode().splitlines()) == 7
        assert scan.blank == 3
    (tmp_path / "g.txt").write_bytes(b"ab\ncd\n" + b"z" * 11 + b"\nq\n")
    with pytest.raises(InputError, match="line 3"):
        textfile.scan_text(tmp_path / "g.txt", limit=10)


def test_reconcile_reports_lost_lines(tmp_path):
    (tmp_path / "f.txt").write_bytes(b"a\nb\n\nc\n")
    scan = scan_text(tmp_path / "f.txt")
    assert reconcile_counts([scan], 3, header=False, delimiter="\t", quote="") == 1
    with pytest.raises(InputError, match="2 records were read from 3 non-blank data lines"):
        reconcile_counts([scan], 2, header=False, delimiter="\t", quote="")


def test_gzip_records_are_scanned_and_a_broken_gzip_is_named(tmp_path):
    import gzip

    body = CSV_HEADER + b"\n" + b"\n".join([*CSV_LINES, b""]) + b"\n"
    (tmp_path / "records.csv.gz").write_bytes(gzip.compress(body))
    from mstdiff.data.tabular import prepare_tabular

    ds = prepare_tabular(tmp_path / "records.csv.gz", min_active_slots=1, threads=1)
    assert ds.meta["counts"]["records_read"] == len(CSV_LINES) + 1
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(body * 50)[:200])
    with pytest.raises(InputError, match="gzip") as info:
        prepare_tabular(tmp_path / "cut.csv.gz", min_active_slots=1, threads=1)
    assert_package_words(str(info.value))
