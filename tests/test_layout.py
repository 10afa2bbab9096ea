"""The design card's import rules, checked on the source (DESIGN.md, "Who may import whom")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PLATFORMS = ("discord", "slack_bolt", "slack_sdk")


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (late imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-node.level])
            found.add(f"{package}.{node.module}" if node.module else package)
    return found


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("path", files("core") + files("gpu_pool"), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_and_pool_never_import_a_chat_platform(path):
    assert not {top(m) for m in imports_of(path)} & set(PLATFORMS)


@pytest.mark.parametrize("path", files("gpu_pool"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_pool_imports_nothing_of_the_bot_or_the_core(path):
    assert not {top(m) for m in imports_of(path)} & {"bot", "core"}


def test_the_protocol_imports_nothing_of_the_project():
    project = {"bot", "core", "gpu_pool", "settings", "scripts", "tests"}
    assert not {top(m) for m in imports_of(ROOT / "gpu_pool" / "protocol.py")} & project


@pytest.mark.parametrize("path", files("core"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_reaches_the_pool_only_through_its_protocol(path):
    pool_imports = {m for m in imports_of(path) if top(m) == "gpu_pool"}
    assert pool_imports <= {"gpu_pool.protocol"}
    assert "bot" not in {top(m) for m in imports_of(path)}


@pytest.mark.parametrize("path", files("bot/adapters"), ids=lambda p: str(p.relative_to(ROOT)))
def test_adapters_only_use_the_core_s_entry_points(path):
    ours = {m for m in imports_of(path) if top(m) in ("core", "gpu_pool", "settings")}
    assert ours <= {"core.turn", "core.engine", "core.errors", "core.commands", "settings.units"}, ours


@pytest.mark.parametrize("path", files("settings"), ids=lambda p: str(p.relative_to(ROOT)))
def test_settings_imports_nothing_of_the_project(path):
    assert not {top(m) for m in imports_of(path)} & {"bot", "core", "gpu_pool"}


def test_the_pool_names_no_chat_command():
    """The pool's words name models and causes; the core words them for the chat (its /load advice included).
    Every string the pool can say or send (docstrings aside, which may name its HTTP routes) is checked for a
    chat command: a sentence holding /load, /models ... (a route alone, "/models", is no sentence)."""
    import re

    commands = ("imagine", "caption", "edit", "reset", "help", "models", "safety", "reload", "load", "unload")
    command = re.compile(rf"(?<![\w/.-])/({'|'.join(commands)})\b(?![/\w])")
    said = []
    for path in sorted((ROOT / "gpu_pool").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and " " in node.value.strip() and command.search(node.value)):
                said.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not said, "\n".join(said)


@pytest.mark.parametrize("path", files("bot/adapters") + files("core"), ids=lambda p: str(p.relative_to(ROOT)))
def test_adapters_do_not_parse_session_keys(path):
    """A session key is opaque once built: what the core or a button needs (the channel, a DM or not,
    the thread) travels on the Turn or comes from the platform's payload, never from splitting the key."""
    keys = {"session", "session_key", "key", "sessions", "where"}

    def named(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute):
            return node.attr
        if isinstance(node, ast.Subscript):  # meta["session"]
            index = node.slice
            return index.value if isinstance(index, ast.Constant) and isinstance(index.value, str) else None
        return None

    parsed = [f"line {node.lineno}: {ast.unparse(node)}" for node in ast.walk(ast.parse(path.read_text(), str(path)))
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("split", "rsplit", "partition", "rpartition", "removeprefix", "startswith")
              and named(node.func.value) in keys]
    assert not parsed, parsed
