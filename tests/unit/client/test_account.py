"""`swarmclient login`: the account token kept in the user's config directory."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from swarm.client.account import ACCOUNT_FILE, forget_token, load_token, save_token


def test_a_saved_token_is_private_and_reads_back(tmp_path: Path) -> None:
    path = save_token(tmp_path / "config", "  sk-swarm-abc  ")
    assert load_token(tmp_path / "config") == "sk-swarm-abc"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_logging_out_forgets_it(tmp_path: Path) -> None:
    save_token(tmp_path, "sk-swarm-abc")
    assert forget_token(tmp_path) is True
    assert load_token(tmp_path) == "" and forget_token(tmp_path) is False


@pytest.mark.parametrize("token", ["", "   ", "two\nlines", "x" * 600])
def test_a_token_that_cannot_be_a_key_is_refused(tmp_path: Path, token: str) -> None:
    with pytest.raises(ValueError, match="account token"):
        save_token(tmp_path, token)


@pytest.mark.parametrize("content", ["{half", "[1, 2]", '{"token": 5}'])
def test_a_damaged_file_reads_as_not_logged_in(tmp_path: Path, content: str) -> None:
    (tmp_path / ACCOUNT_FILE).write_text(content)
    assert load_token(tmp_path) == ""


def test_login_and_logout_commands(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "swarm.client"]
    login = subprocess.run(
        [*run, "login", "--token", "sk-swarm-xyz", "--config-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert login.returncode == 0, login.stderr
    assert "readable by you only" in login.stdout
    assert load_token(tmp_path) == "sk-swarm-xyz"
    logout = subprocess.run(
        [*run, "logout", "--config-dir", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert logout.returncode == 0 and "logged out" in logout.stdout
    assert load_token(tmp_path) == ""
