"""The layers, read from the code: every import of every module against

    embedded > (api | worker) > service > db > labelq

An edge (api, worker, embedded) reaches the database only through a use case; a use case is
`name(ctx, ...)` and never holds a session or a tenant of its own; the README's layout table
says the same as `MAY_IMPORT`."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Which of labelq's packages each package may import (itself always).
MAY_IMPORT: dict[str, set[str]] = {
    "labelq": set(),
    "db": {"labelq"},
    "service": {"db", "labelq"},
    "api": {"service", "labelq"},
    "worker": {"service", "labelq"},
    "embedded": {"api", "worker", "service", "labelq"},
}
PACKAGES = tuple(MAY_IMPORT)


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue  # Alembic's scripts: written out, importing nothing of ours by design
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            yield name, path


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Line numbers of imports under `if TYPE_CHECKING:` (no edge at run time)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                for sub in ast.walk(child):
                    if isinstance(sub, ast.Import | ast.ImportFrom):
                        lines.add(sub.lineno)
    return lines


def imports(path: Path, module: str) -> Iterator[tuple[str, int, bool]]:
    """(imported module, line, at run time) for every import in the file, in functions too."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = _type_checking_only(tree)
    package_parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, node.lineno not in typing_only
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[: len(package_parts) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield target, node.lineno, node.lineno not in typing_only
            for alias in node.names:  # `from service import jobs` imports service.jobs
                yield f"{target}.{alias.name}", node.lineno, node.lineno not in typing_only


def _ours(target: str) -> str | None:
    top = target.split(".")[0]
    return top if top in MAY_IMPORT else None


def test_no_import_points_up_a_floor() -> None:
    wrong = []
    for module, path in modules():
        package = module.split(".")[0]
        for target, line, _ in imports(path, module):
            other = _ours(target)
            if other and other != package and other not in MAY_IMPORT[package]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {package} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(set(wrong)))


def _known(target: str, names: set[str]) -> str | None:
    """The module of ours `target` names (a module, or a name inside one)."""
    while target:
        if target in names:
            return target
        target = target.rpartition(".")[0]
    return None


def test_no_two_modules_import_each_other() -> None:
    """No circle between modules (as `api/cli.py` and `api/demo.py` once were), lazy imports
    included: a circle means neither module can be read without the other."""
    paths = dict(modules())
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        for target, _, at_run_time in imports(path, name):
            found = _known(target, set(paths)) if at_run_time else None
            if found and found != name and not name.startswith(found + "."):
                graph[name].add(found)
    circles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start and len(trail) > 1 and not start.endswith("__init__"):
                    circles.append(" -> ".join([*trail, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    # A package's __init__ re-exporting its modules is not a circle worth naming.
    circles = [c for c in circles if all("." in m or m not in MAY_IMPORT for m in c.split(" -> "))]
    assert not circles, "modules that import each other:\n" + "\n".join(sorted(set(circles)))


def test_routes_reach_the_database_only_through_a_call() -> None:
    """The issue's check, kept: no route holds a session, opens a thread of its own or
    imports `db`."""
    found = []
    for path in sorted((ROOT / "api" / "routes").glob("*.py")):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"Session|sessionmaker|run_in_threadpool|from db", line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def _functions(tree: ast.Module) -> Iterator[ast.FunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            yield node


def test_use_cases_take_a_context_not_a_session_or_a_tenant() -> None:
    """No function of `service/` (methods and helpers too) takes a `Session`, a session maker
    or a `tenant` parameter: use cases open their sessions through `ctx`, and whose data they
    act on is `ctx.tenant`. (`service.context` is the door that opens sessions and makes
    contexts, and `service.wiring` builds them: those two deal in sessions by design.)"""
    wrong = []
    for module, path in modules():
        if not module.startswith("service") or module in ("service.context", "service.wiring"):
            continue
        for fn in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            args = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
            for arg in args:
                shown = ast.unparse(arg.annotation) if arg.annotation else ""
                if arg.arg == "tenant" or re.search(r"\bSession\b|sessionmaker", shown):
                    wrong.append(f"{path.relative_to(ROOT)}:{fn.lineno}: {fn.name}({arg.arg})")
    assert not wrong, "\n".join(wrong)


def test_data_functions_scope_by_a_keyword_tenant() -> None:
    """In `db/`, a `tenant` parameter is keyword-only and has no default: a forgotten
    argument is an error, never a silent read of every tenant's rows or of the default's."""
    wrong = []
    for module, path in modules():
        if not module.startswith("db"):
            continue
        for fn in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            positional = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
            if "tenant" in positional:
                wrong.append(f"{path.relative_to(ROOT)}:{fn.lineno}: {fn.name}: positional")
            kw = fn.args.kwonlyargs
            for arg, default in zip(kw, fn.args.kw_defaults, strict=True):
                if arg.arg == "tenant" and default is not None:
                    wrong.append(f"{path.relative_to(ROOT)}:{fn.lineno}: {fn.name}: a default")
    assert not wrong, "\n".join(wrong)


def test_data_functions_never_commit() -> None:
    """`db/` functions run in their caller's transaction (the use case's `ctx.tx()`)."""
    found = []
    for module, path in modules():
        # Migrations commit their own work; `db.session` ends a connection's implicit
        # transaction before a migration's begins (SQLite's foreign keys can change only then).
        if module.startswith("db") and module not in ("db.migrate", "db.cli", "db.session"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if re.search(r"\.commit\(\)", line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_every_sql_statement_is_in_db() -> None:
    """Outside `db/` nothing builds or runs SQL on labelq's own database: no SQLAlchemy
    statement builders in the use cases and the edges. (Pipelines' sources and sinks in
    `labelq/` talk to the operator's other databases.)"""
    pattern = re.compile(
        r"from sqlalchemy import .*\b(select|insert|update|delete|text)\b|"
        r"\bs\.(execute|scalar|scalars|get|get_one|add|delete|flush|refresh)\("
    )
    found = []
    for module, path in modules():
        if module.split(".")[0] in ("service", "api", "worker", "embedded"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if pattern.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def _readme_layout() -> dict[str, set[str]]:
    """The README's layout table: folder -> what it may import."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    part = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in part.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[0].endswith("/`"):
            may = set(re.findall(r"`(\w+)`", cells[1]))
            table[cells[0].strip("`/")] = may
    return table


def test_the_readme_layout_table_is_the_contract() -> None:
    assert _readme_layout() == MAY_IMPORT


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_is_checked(package: str) -> None:
    assert any(name.split(".")[0] == package for name, _ in modules())
