"""A first look at a raw text file before a reader hands it to DuckDB.

DuckDB reads delimited text fast, but it has its own idea of a bad file: it skips blank lines, it
silently dropped a very long last line (a 50 MB line at the end of a Shanghai day file vanished,
duckdb 2.0), and its messages speak of its internals ("CSV Error on Line", "Parallel CSV Reader").
:func:`scan_text` streams the file once in large blocks (memchr-speed counts with numpy, no Python
loop over lines) and raises :class:`~mstdiff.errors.InputError` in the package's words, naming the
file and the line, for what is not a text file of short UTF-8 lines:

- binary data (a NUL byte, or mostly control bytes), with the kind of file when its magic bytes
  say it (gzip, Parquet, ZIP/Excel);
- UTF-16 or UTF-32 text (by its byte-order mark, or by the pattern of NUL bytes without one);
- bytes that are not UTF-8 (a legacy encoding such as GBK or Latin-1);
- a line longer than :data:`LINE_LIMIT` bytes.

It returns the number of lines and of blank lines, so that a reader can check that every line of
the file became a record or a counted problem (:func:`reconcile_counts`).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mstdiff.errors import InputError

#: Longest line accepted, in bytes (record lines are tens of bytes; DuckDB's own limit is 2 MiB).
LINE_LIMIT = 1 << 20
BLOCK = 4 << 20
_NL, _CR = 10, 13
_MAGIC = (
    (b"\x1f\x8b", "a gzip-compressed file (name it .gz to have it read as such)"),
    (b"PAR1", "a Parquet file (name it .parquet)"),
    (b"PK\x03\x04", "a ZIP archive (an Excel .xlsx workbook is one; export it as CSV)"),
    (b"\x93NUMPY", "a NumPy array file"),
    (b"SQLite format 3", "an SQLite database"),
    (b"\x89PNG", "a PNG image"),
    (b"%PDF", "a PDF document"),
)
_LINE_BREAKS = ("use one kind of line break throughout, e.g. convert to Unix ones with dos2unix FILE "
                "(or sed -i 's/\\r$//' FILE)")
_CONVERT = "convert it to UTF-8, e.g. iconv -f {enc} -t UTF-8 FILE > FILE.utf8"


@dataclass(frozen=True)
class TextScan:
    """What :func:`scan_text` found in one file."""

    path: Path
    lines: int  # lines in the file (a last line without a line break counts)
    blank: int  # lines that are empty (or only a carriage return)
    has_quote: bool  # whether the quote character occurs at all


def _fmt_bytes(n: int) -> str:
    return f"{n:,} bytes ({n / (1 << 20):.1f} MiB)" if n >= 1 << 20 else f"{n:,} bytes"


def _utf16_guess(head: bytes) -> str | None:
    """``"UTF-16-LE"`` / ``"UTF-16-BE"`` when the NUL bytes of ``head`` fall on one parity."""
    a = np.frombuffer(head[: len(head) // 2 * 2], dtype=np.uint8).reshape(-1, 2)
    if a.shape[0] < 2:
        return None
    even, odd = (a[:, 0] == 0).mean(), (a[:, 1] == 0).mean()
    if odd > 0.3 and even < 0.05:
        return "UTF-16-LE"
    if even > 0.3 and odd < 0.05:
        return "UTF-16-BE"
    return None


def _bom_encoding(head: bytes) -> str | None:
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32-LE"), (codecs.BOM_UTF32_BE, "UTF-32-BE"),
                      (codecs.BOM_UTF16_LE, "UTF-16-LE"), (codecs.BOM_UTF16_BE, "UTF-16-BE")):
        if head.startswith(bom):
            return name
    return None


def _magic(head: bytes) -> str | None:
    return next((what for magic, what in _MAGIC if head.startswith(magic)), None)


def _open_binary(path: Path) -> object:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _check_head(path: Path, head: bytes, what: str) -> None:
    """Encoding and binary checks on the first block of a file."""
    enc = _bom_encoding(head)
    if enc is not None:
        raise InputError(f"the file is {enc} text (it starts with a {enc} byte-order mark), not UTF-8",
                         where=str(path), fix=_CONVERT.format(enc=enc.rsplit("-", 1)[0]))
    if b"\x00" in head:
        enc = _utf16_guess(head[:65536])
        if enc is not None:
            raise InputError(f"the file looks like {enc} text (every other byte is NUL), not UTF-8",
                             where=str(path), fix=_CONVERT.format(enc=enc))
    kind = _magic(head)
    if kind is not None:
        raise InputError(f"not a text file: {kind}", where=str(path), fix=f"pass {what}")
    sample = np.frombuffer(head[:65536], dtype=np.uint8)
    if sample.size >= 64:
        control = (sample < 32) & (sample != 9) & (sample != _NL) & (sample != _CR)
        n_nul = int((sample == 0).sum())
        if control.mean() > 0.05 or n_nul > 8:
            raise InputError(
                f"not a text file: binary data ({int(control.sum()):,} of the first {sample.size:,} bytes "
                f"are control characters, {n_nul:,} of them NUL)", where=str(path), fix=f"pass {what}",
            )


def scan_text(path: Path, *, quote: str = "", limit: int = LINE_LIMIT,
              what: str = "the delimited text file of the documented format") -> TextScan:
    """Stream ``path`` (``.gz`` decompressed) once; raise :class:`InputError` for what DuckDB would
    misread or describe in its own words (see the module doc). ``what`` ends the fix hints."""
    path = Path(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = blank = 0
    line_start = 0  # absolute offset of the current (unterminated) line
    pos = 0  # absolute offset of the current block
    term: int | None = None  # the line break byte: \n (also for \r\n) or \r (old Mac files)
    prev_last = -1  # last byte of the previous block
    pending_cr = False  # the previous block ended with a \r
    crlf_mode: bool | None = None  # whether the lines end with \r\n (decided by the first line)
    has_quote = False
    qbyte = quote.encode() if quote else b""
    try:
        with _open_binary(path) as fh:  # type: ignore[attr-defined]
            first = True
            while True:
                block = fh.read(BLOCK)
                if first:
                    _check_head(path, block, what)
                    first = False
                if not block:
                    break
                arr = np.frombuffer(block, dtype=np.uint8)
                if term is None:
                    if b"\n" in block:
                        term = _NL
                    elif b"\r" in block:
                        term = _CR
                nul = block.find(b"\x00")
                if nul >= 0:
                    n_before = lines + int(np.count_nonzero(arr[:nul] == (term or _NL)))
                    raise InputError("the line holds a NUL byte: binary data, not text",
                                     where=f"{path}, line {n_before + 1}",
                                     fix=f"remove the binary data or pass {what}")
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as err:
                    at = max(0, min(int(err.start), arr.size))
                    n_line = lines + int(np.count_nonzero(arr[:at] == (term or _NL))) + 1
                    bad = block[at:at + 4]
                    raise InputError(
                        f"not UTF-8 text (bytes {bad!r}); the file may be in a legacy encoding such as "
                        "GBK or Latin-1", where=f"{path}, line {n_line}",
                        fix=_CONVERT.format(enc="GBK") + " (with the file's real encoding)",
                    ) from err
                if qbyte and not has_quote:
                    has_quote = qbyte in block
                if term == _CR and b"\n" in block:
                    n_line = lines + int(np.count_nonzero(arr[:block.find(b"\n")] == _CR)) + 1
                    raise InputError("the file mixes line breaks: old Mac (CR) ones, then a Unix (LF) one",
                                     where=f"{path}, line {n_line}", fix=_LINE_BREAKS)
                if term == _NL:
                    if pending_cr and arr[0] != _NL:
                        raise InputError("the line holds a carriage return (\\r) that ends no line",
                                         where=f"{path}, line {lines + 1}", fix=_LINE_BREAKS)
                    crs = np.flatnonzero(arr == _CR)
                    pending_cr = bool(crs.size) and int(crs[-1]) == arr.size - 1
                    inner = crs[crs + 1 < arr.size]
                    stray = inner[arr[inner + 1] != _NL]
                    if stray.size:
                        n_line = lines + int(np.count_nonzero(arr[:int(stray[0])] == _NL)) + 1
                        raise InputError("the line holds a carriage return (\\r) that ends no line",
                                         where=f"{path}, line {n_line}", fix=_LINE_BREAKS)
                if term is not None:
                    ends = np.flatnonzero(arr == term)
                    if ends.size:
                        starts = np.empty_like(ends)
                        starts[0] = line_start - pos
                        starts[1:] = ends[:-1] + 1
                        lengths = ends - starts
                        if term == _NL:  # a \r before the \n belongs to the line break
                            before = np.where(ends > 0, arr[np.maximum(ends - 1, 0)], prev_last)
                            crlf = before == _CR
                            lengths = lengths - crlf
                            if crlf_mode is None:
                                crlf_mode = bool(crlf[0])
                            odd = np.flatnonzero(crlf != crlf_mode)
                            if odd.size:
                                kinds = ("Windows (CRLF)", "Unix (LF)")[:: 1 if crlf_mode else -1]
                                raise InputError(
                                    f"the file mixes line breaks: {kinds[0]} ones, then a {kinds[1]} one",
                                    where=f"{path}, line {lines + int(odd[0]) + 1}", fix=_LINE_BREAKS,
                                )
                        blank += int(np.count_nonzero(lengths == 0))
                        long = np.flatnonzero(lengths > limit)
                        if long.size:
                            n_line = lines + int(long[0]) + 1
                            raise InputError(
                                f"the line is {_fmt_bytes(int(lengths[long[0]]))} long, longer than "
                                f"the limit of {_fmt_bytes(limit)} per line (record lines are short): the "
                                "file is damaged or not a record file",
                                where=f"{path}, line {n_line}",
                                fix="remove or split that line (or pass the right file)",
                            )
                        lines += int(ends.size)
                        line_start = pos + int(ends[-1]) + 1
                pos += arr.size
                prev_last = int(arr[-1])
                if pos - line_start > limit + 1:
                    raise InputError(
                        f"the line is longer than the limit of {_fmt_bytes(limit)} per line "
                        "(record lines are short): the file is damaged or not a record file",
                        where=f"{path}, line {lines + 1}",
                        fix="remove or split that line (or pass the right file)",
                    )
            try:
                decoder.decode(b"", final=True)
            except UnicodeDecodeError as err:
                raise InputError("the file ends in the middle of a UTF-8 character",
                                 where=f"{path}, line {lines + 1}",
                                 fix="the file is truncated or not UTF-8: download it again or "
                                 + _CONVERT.format(enc="GBK") + " (with the file's real encoding)") from err
    except (OSError, EOFError, zlib.error) as err:
        if isinstance(err, gzip.BadGzipFile) or isinstance(err, EOFError | zlib.error):
            raise InputError(f"not a readable gzip file ({err})", where=str(path),
                             fix="the file is truncated or not gzip-compressed: download it again, or "
                             "remove the .gz suffix if it is plain text") from err
        raise InputError(f"cannot read the file ({err.strerror or err})", where=str(path),
                         fix="check that the file exists and is readable") from err
    if pos > line_start:  # a last line without a line break
        lines += 1
    return TextScan(path=path, lines=lines, blank=blank, has_quote=has_quote)


def check_parquet(path: Path) -> None:
    """Raise :class:`InputError` unless ``path`` starts and ends with Parquet's magic bytes."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(4)
            fh.seek(max(0, size - 4))
            tail = fh.read(4)
    except OSError as err:
        raise InputError(f"cannot read the file ({err.strerror or err})", where=str(path)) from err
    if size < 12 or head != b"PAR1" or tail != b"PAR1":
        problem = ("it is empty" if size == 0 else "it is truncated (no Parquet footer)"
                   if head == b"PAR1" else "it does not start with Parquet's magic bytes")
        raise InputError(f"not a complete Parquet file: {problem}", where=str(path),
                         fix="write the file again (e.g. pandas DataFrame.to_parquet) or pass a CSV file")


def data_lines(scans: list[TextScan], *, header: bool) -> int:
    """Non-blank lines of ``scans`` after the header lines."""
    return sum(s.lines - s.blank - (1 if header and s.lines else 0) for s in scans)


def check_head(path: Path, what: str = "a UTF-8 text file") -> None:
    """The encoding and binary checks of :func:`scan_text` on the first block of ``path`` only."""
    path = Path(path)
    try:
        with _open_binary(path) as fh:  # type: ignore[attr-defined]
            head = fh.read(65536)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(f"not a complete gzip file ({err})", where=str(path),
                         fix="the file is truncated or not gzip-compressed: download it again, or remove the "
                         ".gz suffix if it is plain text") from err
    except OSError as err:
        raise InputError(f"cannot read the file ({err.strerror or err})", where=str(path),
                         fix="check that the file exists and is readable") from err
    _check_head(path, head, what)


def count_csv_rows(path: Path, *, delimiter: str, quote: str, header: bool) -> tuple[int, int]:
    """``(rows, blank)`` of a quoted CSV file, by Python's csv module (a slow, exact count).

    A quoted field may hold line breaks, so lines and records differ; this is the reference count
    used when DuckDB's count differs from the line count of a file that holds quotes.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    rows = blank = 0
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter, quotechar=quote, strict=True)
        try:
            for row in reader:
                if row:
                    rows += 1
                else:
                    blank += 1
        except csv.Error as err:
            raise InputError(f"line {reader.line_num} cannot be split into fields ({err})",
                             where=f"{path}, line {reader.line_num}",
                             fix=f"check the quotes ({quote}) on that line") from err
    return rows - (1 if header and rows else 0), blank


def reconcile_counts(scans: list[TextScan], rows: int, *, header: bool, delimiter: str, quote: str) -> int:
    """Check that DuckDB's ``rows`` are every non-blank data line of ``scans``; return the blank lines.

    Every line must be a record or a counted problem: DuckDB skips blank lines (counted by the scan,
    returned here so that a reader reports them) and once silently dropped an over-long last line.
    Files holding the quote character are counted again by :func:`count_csv_rows` (a quoted field
    may span lines). Raises :class:`InputError` when the counts still differ.
    """
    expected = data_lines(scans, header=header)
    blank = sum(s.blank for s in scans)
    if rows != expected and quote and any(s.has_quote for s in scans):
        expected, blank = 0, 0
        for s in scans:
            if s.has_quote:
                r, b = count_csv_rows(s.path, delimiter=delimiter, quote=quote, header=header)
            else:
                r, b = s.lines - s.blank - (1 if header and s.lines else 0), s.blank
            expected += r
            blank += b
    if rows != expected:
        where = ", ".join(str(s.path) for s in scans)
        raise InputError(
            f"{rows:,} records were read from {expected:,} non-blank data lines: "
            f"{abs(expected - rows):,} line(s) were {'lost' if rows < expected else 'split'} by the reader",
            where=where,
            fix="check the files for unbalanced quotes or broken line endings, or report this as a bug",
        )
    return blank
