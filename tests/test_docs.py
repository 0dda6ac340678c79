"""The documentation's generated parts and its promises: every config field has help, the CLI reference covers every
command, the README stays short, and the docs name only modules and files that exist.

The site itself is built by ``make docs`` (``mkdocs build --strict``); these checks run in the test suite so that a
config field without a help comment, or a page naming a moved module, fails CI even before the build.
"""

import ast
import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"
PAGES = sorted(DOCS.rglob("*.md")) + [README]


@pytest.fixture(scope="module")
def hook():
    spec = importlib.util.spec_from_file_location("mmrad_docs_hook", DOCS / "hooks" / "mmrad_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_config_field_has_help(hook):
    fields = hook.config_fields()
    assert len(fields) > 50 and {"model.preprocess.window", "train.lr", "lora.r"} <= {f.key for f in fields}
    assert hook.missing_help(fields) == [], "write `name: type = default  # what it means` in mmrad/config/schema.py"


def test_a_field_without_help_is_caught(hook, tmp_path):
    source = (REPO / "mmrad" / "config" / "schema.py").read_text()
    bare = source.replace("    r: int = 8  # adapter rank\n", "    r: int = 8\n")
    assert bare != source
    (tmp_path / "schema.py").write_text(bare)
    assert hook.missing_help(hook.config_fields(tmp_path / "schema.py")) == ["lora.r (LoraSettings)"]


def test_comment_lines_above_a_field_are_its_help(hook):
    help_of = {f.key: f.help for f in hook.config_fields()}
    assert help_of["model.preprocess.window"].startswith("DICOM VOI policy")
    assert help_of["model.vision.pretrained"].startswith("open_clip pretrained tag")


def test_cli_reference_covers_every_command(hook):
    from mmrad.cli import build_parser

    text = hook.render_cli()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in sub.choices:
        assert f"## `mmrad {name}`" in text and f"usage: mmrad {name}" in text


def test_bench_table_renders_every_entry(hook):
    import json

    entries = json.loads((REPO / "bench" / "results.json").read_text())
    table = hook.render_bench()
    assert all(e["name"] in table for e in entries)
    assert "Not measured yet" in hook.render_bench("no such benchmark")


def test_architecture_page_places_every_part(hook):
    text = (DOCS / "architecture.md").read_text()
    assert "<!-- gen:ranks -->" in text
    folders = {p.name for p in (REPO / "mmrad").iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert {f"mmrad.{f}" for f in folders} <= set(hook.layout_ranks())
    assert [f for f in sorted(folders) if f"`mmrad/{f}/`" not in text] == []


def test_readme_is_short_and_shows_the_two_commands():
    text = README.read_text()
    assert len(text.encode()) <= 12_000
    assert "make demo" in text and "make test" in text


def _defined_names(path: Path) -> set[str]:
    """Top-level names of a module, including those bound under a top-level ``if`` (TYPE_CHECKING imports)."""
    tree = ast.parse(path.read_text())
    nodes = list(tree.body) + [n for top in tree.body if isinstance(top, ast.If) for n in top.body]
    names = set()
    for node in nodes:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    if path.name == "__init__.py":
        names |= {p.stem for p in path.parent.iterdir() if p.suffix == ".py" or (p / "__init__.py").is_file()}
        for node in nodes:  # lazily exported names (mmrad/__init__.py, mmrad/models/__init__.py)
            targets = [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)]
            if "_EXPORTS" in targets:
                names |= set(ast.literal_eval(node.value))
    return names


def _module_file(dotted: str) -> Path | None:
    base = REPO.joinpath(*dotted.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def test_docs_name_only_modules_and_files_that_exist():
    stale = []
    for page in PAGES:
        text = page.read_text()
        for dotted in set(re.findall(r"\bmmrad(?:\.\w+)+", text)):
            parts = dotted.split(".")
            # the longest prefix that is a module; the next part must be a name defined in it
            for cut in range(len(parts), 0, -1):
                module = _module_file(".".join(parts[:cut]))
                if module is not None:
                    break
            if cut < len(parts) and parts[cut] not in _defined_names(module):
                stale.append(f"{page.relative_to(REPO)}: {dotted}")
        for path in set(re.findall(r"(?<![\w/.~-])(?:mmrad|scripts|tests)/[\w./-]*\w", text)):
            if not (REPO / path).exists():
                stale.append(f"{page.relative_to(REPO)}: {path}")
        if re.search(r"\bconfigs/", text):
            stale.append(f"{page.relative_to(REPO)}: configs/ (the shipped configs are named: --config tiny)")
    assert stale == [], "\n".join(stale)
