"""The drift contract: committed generated code matches the .proto files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from swarm.protocol import codegen

pytest.importorskip("grpc_tools")


def _copy_generated(tmp_path: Path) -> Path:
    copy = tmp_path / "generated"
    shutil.copytree(codegen.GENERATED_DIR, copy)
    return copy


def test_committed_generated_code_matches_the_proto() -> None:
    assert codegen.drifted_files() == [], (
        "generated code is stale: run `python -m swarm.protocol.codegen` and commit the result"
    )


def test_an_edited_generated_file_is_reported(tmp_path: Path) -> None:
    copy = _copy_generated(tmp_path)
    target = copy / "worker_pb2.py"
    target.write_text(target.read_text() + "\n# edited by hand\n")
    assert codegen.drifted_files(committed_dir=copy) == ["worker_pb2.py"]


def test_an_unmodified_copy_is_not_reported(tmp_path: Path) -> None:
    assert codegen.drifted_files(committed_dir=_copy_generated(tmp_path)) == []


def test_a_missing_generated_file_is_reported(tmp_path: Path) -> None:
    copy = _copy_generated(tmp_path)
    (copy / "worker_pb2_grpc.py").unlink()
    assert codegen.drifted_files(committed_dir=copy) == ["worker_pb2_grpc.py"]


def test_generate_writes_package_relative_imports(tmp_path: Path) -> None:
    written = codegen.generate(tmp_path)
    assert {p.name for p in written} == {"worker_pb2.py", "worker_pb2.pyi", "worker_pb2_grpc.py"}
    grpc_module = (tmp_path / "worker_pb2_grpc.py").read_text()
    assert "from . import worker_pb2" in grpc_module
    assert "from swarm.v1 import" not in grpc_module


def test_check_command_passes_on_the_committed_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert codegen.main(["--check"]) == 0
    assert "matches" in capsys.readouterr().out


def test_check_command_fails_and_names_drifted_files(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(codegen, "drifted_files", lambda: ["worker_pb2.py"])
    assert codegen.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "worker_pb2.py" in err
    assert "python -m swarm.protocol.codegen" in err
