"""The package layout: folders by job, imports flowing one way, no cycles, no reaching into private names.

Each top-level part of ``mmrad`` has a rank; a module may import from its own part and from parts of lower rank only
(imports inside functions count too). The order is the architecture page's (docs/architecture.md).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mmrad"
RANKS = {
    "mmrad.errors": 0, "mmrad.files": 0, "mmrad.processes": 0,
    "mmrad.config": 1,
    "mmrad.privacy": 2,
    "mmrad.io": 3,
    "mmrad.reports": 4, "mmrad.processing": 4, "mmrad.phantom": 4,
    "mmrad.corpus": 5,
    "mmrad.models": 6,
    "mmrad.inference": 7,
    "mmrad.evaluation": 8,
    "mmrad.training": 9,
    "mmrad.hub": 10,
    "mmrad.demo": 11,
    "mmrad.commands": 12, "mmrad.cli": 12, "mmrad.__main__": 12,
}  # fmt: skip


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _part(module: str) -> str:
    for prefix in sorted(RANKS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return module


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every mmrad import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmrad") and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("mmrad")]
    return out


def test_every_module_has_a_place():
    unplaced = sorted(m for m in MODULES if m != "mmrad" and _part(m) not in RANKS)
    assert unplaced == []


def test_imports_flow_one_way():
    upward = []
    for module, path in MODULES.items():
        if module == "mmrad":  # the lazy top-level API names everything
            continue
        for target, _ in _imports(path):
            if target == "mmrad":  # __version__
                continue
            if RANKS[_part(target)] > RANKS[_part(module)]:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_import_cycles_between_modules():
    graph = {m: {t for t, _ in _imports(p) if t in MODULES and t != m} for m, p in MODULES.items() if m != "mmrad"}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_no_private_names_imported_across_modules():
    private = [f"{m}: {t}.{n}" for m, p in MODULES.items() for t, names in _imports(p) for n in names
               if n.startswith("_") and not n.startswith("__") and t != m]  # fmt: skip
    assert private == []


@pytest.mark.parametrize("module", ["mmrad.cli", "mmrad.commands.info"])
def test_cli_modules_import_nothing_heavy_at_the_top(module):
    tree = ast.parse(MODULES[module].read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    heavy = {"torch", "open_clip", "transformers", "evaluate", "datasets", "peft", "accelerate"}
    names = {(n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
    names |= {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
    assert not names & heavy


def test_top_level_api_is_lazy_and_complete():
    import subprocess
    import sys

    import mmrad

    for name in mmrad.__all__:
        assert getattr(mmrad, name) is not None, name
    assert set(mmrad.__all__) - {"__version__"} == set(mmrad._EXPORTS)
    assert mmrad.evaluate.__name__ == "evaluate_corpus" and "tiny" in mmrad.list_configs()
    heavy = "('torch', 'datasets', 'open_clip')"
    code = f"import mmrad, sys; mmrad.__version__; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # naming mmrad costs no heavy import


def test_named_configs_load_by_name(tmp_path):
    from mmrad.config.registry import list_configs, resolve_config
    from mmrad.config.schema import ConfigError, load_config

    assert {"tiny", "demo", "nih-effnet-lite2"} <= set(list_configs())
    assert load_config("nih_effnet_lite2").model.labels.vocabulary == "nih14"  # underscores work too
    assert resolve_config("tiny") == resolve_config("tiny.yaml")
    with pytest.raises(ConfigError, match="not found, and not a shipped config"):
        load_config("no-such-config")
