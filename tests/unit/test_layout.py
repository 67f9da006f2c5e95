"""Contract tests for the shape of the code base: layers, dependencies, packaging."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]

# Each package may import the packages listed for it (and itself), nothing above.
ALLOWED = {
    "protocol": set(),
    "compression": {"protocol"},
    "models": {"compression", "protocol"},
    "scheduler": {"models", "compression", "protocol"},
    "coordinator": {"scheduler", "models", "compression", "protocol"},
    "client": {"scheduler", "models", "compression", "protocol"},
}


def _swarm_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("swarm.") and "." in n}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_layers_below(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        if "generated" in path.parts:
            continue
        illegal = _swarm_imports(path) - ALLOWED[package] - {package}
        assert not illegal, f"{path.relative_to(ROOT)} imports {sorted(illegal)}"


@pytest.mark.parametrize("package", ["scheduler", "compression"])
def test_pure_packages_do_no_io(package: str) -> None:
    forbidden = {"grpc", "sqlalchemy", "fastapi", "socket", "subprocess", "httpx", "open"}
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        modules = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        modules |= {
            node.module.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        }
        calls = {
            node.func.id
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        assert not (modules | calls) & forbidden, f"{path.relative_to(ROOT)} does I/O"


def test_generated_code_is_only_touched_inside_protocol() -> None:
    for package in set(ALLOWED) - {"protocol"}:
        for path in (ROOT / package).rglob("*.py"):
            assert "_pb2" not in path.read_text(), f"{path.relative_to(ROOT)} uses generated code"


def test_core_dependencies_leave_out_the_coordinator_stack() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    for server_only in ("fastapi", "uvicorn", "sqlalchemy", "alembic", "psycopg"):
        assert server_only not in core
        assert any(server_only in d for d in project["optional-dependencies"]["coordinator"])
    assert project["name"] == "swarmclient"
    assert set(project["scripts"]) == {"swarm", "swarmclient"}


def assert_loads_none(statement: str, modules: tuple[str, ...]) -> None:
    """Run `statement` in a fresh interpreter; none of `modules` may be imported by it."""
    code = (
        f"import sys; {statement}; "
        f"bad = [m for m in {modules!r} if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_worker_imports_no_server_dependency() -> None:
    assert_loads_none(
        "import swarm.client.worker, swarm.client.cli",
        ("fastapi", "sqlalchemy", "uvicorn", "alembic", "psycopg"),
    )


def test_the_api_commands_start_without_loading_torch() -> None:
    """`swarm jobs …` and `swarm credits …` are HTTP clients: they answer in a blink."""
    assert_loads_none(
        "from swarm.coordinator.cli import build_parser; build_parser()",
        ("torch", "transformers", "sqlalchemy"),
    )


def test_every_package_folder_is_declared() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    for folder, package in ((p, f"swarm.{p}") for p in ALLOWED):
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            assert ".".join((package, *relative)) in declared, f"{init} is not packaged"
