"""Fix hints name only options that exist.

Every "how to fix" text in the package (the ``fix=`` of an :class:`InputError`, the fix of a reader's
validity :class:`~mstdiff.data.binning.Check`, and the strings they are built from) is collected from
the sources; each ``--flag`` it names must be an option of some ``mstdiff`` command, and each
``-o key=...`` a key that some ``-o`` of the CLI accepts (a reader option of ``mstdiff prepare``, or
an option of the ``kg`` commands).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import click
import pytest

from mstdiff.cli import cli

SRC = Path(__file__).resolve().parents[2] / "src" / "mstdiff"
FLAG_RE = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)")
OPTION_RE = re.compile(r"""(?<![\w-])-o\s+["']?([A-Za-z_][A-Za-z0-9_]*)=""")
# a whole -o argument as a user would type it: quoted ('...' or "..."), or up to a space, comma or ')'
OPTION_ARG_RE = re.compile(r"""(?<![\w-])-o\s+(?:'([^']*)'|"([^"]*)"|([^\s,)]+))""")


def _strings(node: ast.AST, names: dict[str, list[ast.AST]], seen: set[str]) -> list[str]:
    """The text pieces an expression is built from (f-string holes become '{}')."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return ["".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)]
    if isinstance(node, ast.Name):
        if node.id in seen:
            return []
        return [s for value in names.get(node.id, []) for s in _strings(value, names, seen | {node.id})]
    out: list[str] = []
    for child in ast.iter_child_nodes(node):
        out += _strings(child, names, seen)
    return out


def fix_hints(source: str) -> list[str]:
    """Every fix hint in ``source`` (a module's text)."""
    tree = ast.parse(source)
    names: dict[str, list[ast.AST]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    names.setdefault(target.id, []).append(node.value)
    hints: list[str] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for kw in node.keywords:
            if kw.arg == "fix":
                hints += _strings(kw.value, names, set())
        func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if func == "Check" and len(node.args) >= 4:
            hints += _strings(node.args[3], names, set())
        if func in ("duckdb_errors", "input_error_from_duckdb") and len(node.args) >= 2:
            hints += _strings(node.args[1], names, set())
    return hints


def all_hints() -> list[tuple[str, str]]:
    return [(str(p.relative_to(SRC)), h) for p in sorted(SRC.rglob("*.py"))
            for h in fix_hints(p.read_text(encoding="utf-8"))]


def cli_flags() -> set[str]:
    flags: set[str] = set()

    def walk(cmd: click.Command) -> None:
        for p in cmd.params:
            flags.update(o[2:] for o in (*p.opts, *p.secondary_opts) if o.startswith("--"))
        if isinstance(cmd, click.Group):
            for sub in cmd.commands.values():
                walk(sub)

    walk(cli)
    flags.update({"help", "version"})
    return flags


def dash_o_keys() -> set[str]:
    """Keys accepted by some ``-o KEY=VALUE`` of the CLI."""
    from mstdiff.data.prepare import SOURCES, source_options
    from mstdiff.diffusion.discrete import transition_dir
    from mstdiff.kg.triples import KGOptions
    from mstdiff.kg.tucker import TuckerConfig

    keys = {k for s in SOURCES for k in source_options(s)}
    keys |= {f.name for f in dataclasses.fields(KGOptions)}
    keys |= {f.name for f in dataclasses.fields(TuckerConfig)}
    keys |= {"holdout", "split_seed"}
    keys |= {n for n, p in inspect.signature(transition_dir).parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return keys


def unknown_names(hints: list[tuple[str, str]]) -> list[str]:
    flags, keys = cli_flags(), dash_o_keys()
    bad = []
    for where, hint in hints:
        bad += [f"{where}: --{f} in {hint!r}" for f in FLAG_RE.findall(hint) if f not in flags]
        bad += [f"{where}: -o {k} in {hint!r}" for k in OPTION_RE.findall(hint) if k not in keys]
    return bad


def test_every_dash_o_example_in_a_hint_parses_as_the_cli_parses_it():
    """Every ``-o`` example of a hint is accepted by the CLI's option parser, with the value the hint
    means (a strftime format given unquoted stays the text it is)."""
    from mstdiff.cli import _parse_options

    args = ["".join(m) for _, hint in all_hints() for m in OPTION_ARG_RE.findall(hint)]
    assert len(args) >= 5 and any("%" in a for a in args)
    for arg in args:
        _parse_options((arg.replace("{}", "x"),))  # raises on an argument the CLI cannot parse
    assert _parse_options(("timestamp_format=%Y%m%d",)) == {"timestamp_format": "%Y%m%d"}
    assert _parse_options(("timestamp_format='%Y%m%d'",)) == {"timestamp_format": "%Y%m%d"}


def test_hints_are_collected_from_the_readers():
    hints = [h for _, h in all_hints()]
    assert len(hints) > 100
    named = [h for h in hints if FLAG_RE.search(h) or OPTION_RE.search(h)]
    assert any("-o unknown_stations=drop" in h for h in named)  # shanghai + tabular
    assert any("-o timestamp_format=" in h for h in named)
    assert any("--overwrite" in h for h in named)


def test_every_flag_and_option_named_in_a_hint_exists():
    assert unknown_names(all_hints()) == []


@pytest.mark.parametrize("text,expect", [
    ('raise InputError("x", fix="pass stations=PATH (--stations)")', ["--stations"]),
    ('FIX = "drop them (--unknown-stations drop)"\nraise InputError("x", fix=FIX)', ["--unknown-stations"]),
    ('raise InputError("x", fix=f"use -o no_such_key={v} or --overwrite")', ["-o no_such_key"]),
    ('Check("c", ("a",), "what", "add -o stations=PATH or --out DIR")', []),
])
def test_the_check_finds_names_that_do_not_exist(text, expect):
    bad = unknown_names([("snippet.py", h) for h in fix_hints(text)])
    assert [b.split(": ", 1)[1].split(" in ")[0] for b in bad] == expect
