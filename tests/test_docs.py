"""Docs that cannot drift from the code: the hook reference in docs/plugins.md is
generated from hookspecs.py and must be current, every hook is documented and has a
test that calls it, every name of the public plugin API resolves, plugins import only
that API, and the tutorial's plugin works as written."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from lightningd_py import api, hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "plugins.md"
TESTS = ROOT / "tests"
HOOKS = sorted(name for name, value in vars(hookspecs).items() if hasattr(value, "lightningd_py_spec"))


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_hook_docs", ROOT / "scripts" / "gen_hook_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def titled_blocks(text: str) -> dict[str, str]:
    """Fenced code blocks with a ``title="path"`` in their info string, by path."""
    pattern = re.compile(r'^```\w+ title="(?P<path>[^"]+)"\n(?P<code>.*?)^```$', re.S | re.M)
    return {m["path"]: m["code"] for m in pattern.finditer(text)}


# ---------------------------------------------------------------- hook reference


def test_hooks_are_found() -> None:
    assert len(HOOKS) >= 20
    assert "ldp_invoice_event" in HOOKS and "hookimpl" not in HOOKS


def test_hook_reference_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_hook_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_every_hook_is_documented_with_its_signature() -> None:
    text = DOCS.read_text()
    generator = load_generator()
    reference = text[text.index(generator.BEGIN) : text.index(generator.END)]
    source = ast.parse((ROOT / "lightningd_py" / "hookspecs.py").read_text())
    specs = {n.name: n for n in source.body if isinstance(n, ast.FunctionDef) and n.name in HOOKS}
    for hook in HOOKS:
        assert f"### `{hook}(" in reference, f"{hook} is not documented in docs/plugins.md"
        assert generator._signature(specs[hook]) in reference, f"{hook}: documented signature is stale"


def test_a_changed_contract_makes_the_reference_stale() -> None:
    generator = load_generator()
    text = DOCS.read_text()
    source = (ROOT / "lightningd_py" / "hookspecs.py").read_text()
    added = source + (
        '\n\n@hookspec\ndef ldp_new_hook(daemon: Daemon) -> None:\n    """A new hook.\n\n'
        '    :param daemon: this plugin\'s handle on the daemon.\n    """\n'
    )
    changed = source.replace("An outgoing payment succeeded or failed.", "An outgoing payment ended.")
    assert generator.update(text, generator.render(source)) == text
    assert "### `ldp_new_hook(daemon)`" in generator.update(text, generator.render(added))
    assert generator.update(text, generator.render(changed)) != text


def test_every_hook_has_a_test_that_calls_it() -> None:
    # A hook counts as tested when a test plugin under tests/ implements it; the probe
    # plugin implements all of them and tests/test_plugin_hooks.py asserts the daemon
    # called each one.
    implemented: dict[str, list[str]] = {hook: [] for hook in HOOKS}
    for path in TESTS.rglob("*.py"):
        if path.name == "test_docs.py":
            continue
        text = path.read_text()
        for hook in HOOKS:
            if re.search(rf"^\s*(async )?def {hook}\(", text, re.M):
                implemented[hook].append(str(path.relative_to(ROOT)))
    untested = [hook for hook, where in implemented.items() if not where]
    assert not untested, f"hooks no test plugin implements: {untested}"
    probe_test = (TESTS / "test_plugin_hooks.py").read_text()
    assert "set(HOOKS) - recorded" in probe_test


# ---------------------------------------------------------------- the public API


def test_every_name_in_the_api_resolves() -> None:
    assert len(set(api.__all__)) == len(api.__all__)
    missing = [name for name in api.__all__ if not hasattr(api, name)]
    assert not missing


def test_the_api_offers_every_type_the_hooks_take() -> None:
    # Everything a hook signature names (under TYPE_CHECKING in hookspecs) is importable
    # from the API, except third-party types (pydantic, prometheus_client).
    source = ast.parse((ROOT / "lightningd_py" / "hookspecs.py").read_text())
    names = {
        alias.asname or alias.name
        for node in ast.walk(source)
        if isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names
    }
    assert names, "hookspecs imports no types from the core?"
    assert names <= set(api.__all__), f"not in lightningd_py.api: {names - set(api.__all__)}"


def test_names_the_docs_use_from_the_api_exist() -> None:
    text = DOCS.read_text() + (ROOT / "examples" / "ldp-loyalty" / "README.md").read_text()
    used = set(re.findall(r"\bapi\.([A-Za-z_][A-Za-z0-9_]*)", text))
    assert used, "docs/plugins.md mentions no api.* names?"
    assert used <= set(api.__all__), f"docs use names the API lacks: {used - set(api.__all__)}"


def plugin_sources() -> list[tuple[str, str]]:
    files = [
        *sorted((ROOT / "examples").glob("*/*/*.py")),
        *sorted((TESTS / "plugins" / "fake").glob("*/*.py")),
    ]
    sources = [(str(p.relative_to(ROOT)), p.read_text()) for p in files if p.parent.name != "tests"]
    sources += [(f"docs/plugins.md: {path}", code) for path, code in titled_blocks(DOCS.read_text()).items()]
    return [(name, code) for name, code in sources if name.endswith(".py")]


@pytest.mark.parametrize(("name", "code"), plugin_sources(), ids=lambda v: v if "\n" not in v else "")
def test_third_party_plugins_import_only_the_public_api(name: str, code: str) -> None:
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            bad = [a.name for a in node.names if a.name.split(".")[0] == "lightningd_py"]
            assert not bad, f"{name}: import {bad}; use 'from lightningd_py import api'"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lightningd_py":
            assert node.module == "lightningd_py" and [a.name for a in node.names] == ["api"], (
                f"{name}: from {node.module} import ...; use 'from lightningd_py import api'"
            )


# ---------------------------------------------------------------- the tutorial


def test_the_tutorial_plugin_works_as_written(tmp_path: Path) -> None:
    """Build the tutorial's package from the code blocks in docs/plugins.md, install it
    for the daemon the way pip would (a dist-info with its entry points), and run the
    tutorial's own test."""
    blocks = titled_blocks(DOCS.read_text())
    assert {"pyproject.toml", "ldp_sales/__init__.py", "tests/test_sales.py"} <= set(blocks)
    project = tomllib.loads(blocks["pyproject.toml"])["project"]
    site = tmp_path / "site"
    package = site / "ldp_sales"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(blocks["ldp_sales/__init__.py"])
    dist_info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    entry_points = "".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in eps.items())
        for group, eps in project["entry-points"].items()
    )
    (dist_info / "entry_points.txt").write_text(entry_points)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_sales.py").write_text(blocks["tests/test_sales.py"])

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_sales.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout
