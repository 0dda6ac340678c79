"""MkDocs hook: the generated parts of the documentation, rendered from the code at build time.

A page asks for a generated block with a line of its own::

    <!-- gen:cli -->                      every ``mmrad`` command's help, from ``mmrad.cli.build_parser()``
    <!-- gen:config -->                   every config field's YAML key, type, default and help
    <!-- gen:bench -->                    every figure of ``bench/results.json``
    <!-- gen:bench NIH boxes -->          the figures whose names start with "NIH boxes"
    <!-- gen:ranks -->                    the import ranks that ``tests/test_layout.py`` enforces

Config help is the field's inline ``# comment`` in ``mmrad/config/schema.py`` (or the comment lines right above the
field); a field without one fails the build, and ``tests/test_docs.py`` fails CI the same way. The benchmark table is
``table()`` of ``scripts/benchlib.py``, the same function ``scripts/bench_table.py`` prints with.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import io
import json
import re
import tokenize
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "mmrad" / "config" / "schema.py"
RESULTS = REPO / "bench" / "results.json"
BENCHLIB = REPO / "scripts" / "benchlib.py"
LAYOUT_TEST = REPO / "tests" / "test_layout.py"
MARKER = re.compile(r"^<!-- gen:(\w+)(?: (.*?))? -->$", re.MULTILINE)
PRAGMA = re.compile(r"^(?:fmt:|noqa|type:|pragma)")
HELP_WIDTH = 100  # columns of the rendered --help text


class DocsError(Exception):
    """A generated block that cannot be rendered (the message says which and why)."""


# ---------------------------------------------------------------------------------------------------- config


class ConfigField(NamedTuple):
    key: str  # the YAML key path, e.g. "model.preprocess.window"
    section: str  # the dataclass that holds it
    type: str  # the annotation as written
    default: str  # YAML-like; "required" when the field has none
    help: str  # the field's comment ("" when missing)


def _comments(source: str) -> dict[int, list[str]]:
    """Line number -> the comments on that line (pragmas such as ``fmt: skip`` left out)."""
    out: dict[int, list[str]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if text and not PRAGMA.match(text):
                out.setdefault(tok.start[0], []).append(text)
    return out


def _help_of(node: ast.AnnAssign, lines: list[str], comments: dict[int, list[str]]) -> str:
    """A field's help: the comments on its own lines, after the comment-only lines right above it."""
    above = []
    line = node.lineno - 1
    while line >= 1 and lines[line - 1].strip().startswith("#"):
        above = comments.get(line, []) + above
        line -= 1
    inline = [c for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) for c in comments.get(n, [])]
    return " ".join(above + inline)


def _yaml_value(value) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def config_fields(schema: Path = SCHEMA) -> list[ConfigField]:
    """Every field of the experiment config, depth first from ``ExperimentConfig``, with its help comment."""
    from mmrad.config import schema as module

    source = schema.read_text(encoding="utf-8")
    lines, comments = source.splitlines(), _comments(source)
    nodes: dict[str, dict[str, ast.AnnAssign]] = {}
    for cls in ast.parse(source).body:
        if isinstance(cls, ast.ClassDef):
            nodes[cls.name] = {n.target.id: n for n in cls.body
                               if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}  # fmt: skip

    out: list[ConfigField] = []

    def walk(cls, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            node = nodes[cls.__name__][f.name]
            if f.default is not dataclasses.MISSING:
                default = _yaml_value(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                made = f.default_factory()
                default = "its defaults" if dataclasses.is_dataclass(made) else _yaml_value(made)
            else:
                default = "required"
            key = f"{prefix}.{f.name}" if prefix else f.name
            out.append(ConfigField(key, cls.__name__, ast.unparse(node.annotation), default,
                                   _help_of(node, lines, comments)))  # fmt: skip
            sub = getattr(module, ast.unparse(node.annotation), None)
            if isinstance(sub, type) and dataclasses.is_dataclass(sub):
                walk(sub, key)

    walk(module.ExperimentConfig, "")
    return out


def missing_help(fields: list[ConfigField]) -> list[str]:
    return [f"{f.key} ({f.section})" for f in fields if not f.help]


def _anchor(section: str) -> str:
    return section.replace(".", "-") if section else "top-level"


def render_config() -> str:
    fields = config_fields()
    missing = missing_help(fields)
    if missing:
        raise DocsError(
            f"config fields without a help comment in {SCHEMA.relative_to(REPO)}: {', '.join(missing)} "
            "(write `name: type = default  # what it means`)"
        )
    sections: dict[str, list[ConfigField]] = {}  # parent key -> its fields, in the order the walk meets them
    for f in fields:
        sections.setdefault(f.key.rpartition(".")[0], []).append(f)
    blocks = []
    for parent, members in sections.items():
        title = f"`{parent}`" if parent else "Top level"
        rows = []
        for f in members:
            key = f"[`{f.key}`](#{_anchor(f.key)})" if f.key in sections else f"`{f.key}`"
            rows.append(f"| {key} | `{f.type}` | `{f.default}` | {f.help.replace('|', chr(92) + '|')} |")
        blocks.append(
            f"## {title} {{ #{_anchor(parent)} }}\n\n`{members[0].section}`\n\n"
            "| key | type | default | help |\n|---|---|---|---|\n" + "\n".join(rows)
        )
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------------------------------- CLI


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, width=HELP_WIDTH)


def cli_commands() -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, one-line help, parser)`` of every ``mmrad`` subcommand, in ``mmrad --help`` order."""
    from mmrad.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    return [("", parser.description or "", parser)] + [(n, helps.get(n, ""), p) for n, p in sub.choices.items()]


def render_cli() -> str:
    commands = cli_commands()
    table = ["| command | what it does |", "|---|---|"]
    table += [f"| [`mmrad {name}`](#mmrad-{name}) | {text} |" for name, text, _ in commands[1:]]
    blocks = ["\n".join(table)]
    for name, text, parser in commands:
        parser.formatter_class = _formatter
        title = f"mmrad {name}".strip()
        anchor = title.replace(" ", "-")
        intro = f"{text}\n\n" if name else ""
        blocks.append(f"## `{title}` {{ #{anchor} }}\n\n{intro}```text\n{parser.format_help().rstrip()}\n```")
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------------------------------- benchmarks


def _benchlib():
    spec = importlib.util.spec_from_file_location("benchlib", BENCHLIB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render_bench(prefix: str = "") -> str:
    entries = [e for e in json.loads(RESULTS.read_text(encoding="utf-8")) if e["name"].startswith(prefix)]
    if not entries:
        where = f'no figure named "{prefix} ..." yet' if prefix else "no figures yet"
        return (f'!!! note "Not measured yet"\n    `{RESULTS.relative_to(REPO)}` holds {where}; the table appears '
                "here once the benchmark has recorded them.")  # fmt: skip
    return _benchlib().table(entries)


# ---------------------------------------------------------------------------------------------------- layout


def layout_ranks(path: Path = LAYOUT_TEST) -> dict[str, int]:
    """The ``RANKS`` table of ``tests/test_layout.py`` (part -> rank), read without running the test module."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "RANKS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise DocsError(f"{path.relative_to(REPO)} has no RANKS table")


def render_ranks() -> str:
    by_rank: dict[int, list[str]] = {}
    for part, rank in layout_ranks().items():
        by_rank.setdefault(rank, []).append(f"`{part}`")
    rows = [f"| {rank} | {', '.join(parts)} |" for rank, parts in sorted(by_rank.items())]
    return "| rank | parts |\n|---|---|\n" + "\n".join(rows)


# ---------------------------------------------------------------------------------------------------- the hook

GENERATORS = {"cli": render_cli, "config": render_config, "bench": render_bench, "ranks": render_ranks}


def render(name: str, argument: str | None) -> str:
    if name not in GENERATORS:
        raise DocsError(f"unknown generated block 'gen:{name}' (known: {', '.join(GENERATORS)})")
    return GENERATORS[name](argument) if argument else GENERATORS[name]()


def on_page_markdown(markdown: str, page, config, files) -> str:
    from mkdocs.exceptions import PluginError

    def replace(match: re.Match) -> str:
        try:
            return render(match.group(1), match.group(2))
        except DocsError as err:
            raise PluginError(f"{page.file.src_uri}: {err}") from err

    return MARKER.sub(replace, markdown)


def on_config(config):
    # the benchmark results, the schema and the layout test are read at build time: `mkdocs serve` rebuilds on them
    config.watch.extend([str(RESULTS), str(SCHEMA.parent), str(BENCHLIB), str(LAYOUT_TEST)])
    return config
