"""The volunteer's account: a token in the user's config directory that links this machine's
workers to their account, so the credits they earn can pay for their own jobs.

The token is the account's API key (`swarm keys create NAME` on the coordinator, or one the
operator hands out). `swarmclient login --token` stores it, readable by the user only;
`swarmclient logout` removes it. The coordinator checks it at every registration.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ACCOUNT_FILE = "account.json"


def default_config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "swarmclient"


def save_token(config_dir: Path, token: str) -> Path:
    """Store the token with owner-only permissions; returns the file."""
    token = token.strip()
    if not token or not token.isprintable() or len(token) > 512:
        raise ValueError("the account token must be one line of printable text (an API key)")
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / ACCOUNT_FILE
    partial = path.with_suffix(".new")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"token": token}, out)
    os.replace(partial, path)
    return path


def load_token(config_dir: Path) -> str:
    """The stored token, or "" when this machine is not logged in (or the file is damaged)."""
    try:
        token = json.loads((config_dir / ACCOUNT_FILE).read_text()).get("token", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return token if isinstance(token, str) else ""


def forget_token(config_dir: Path) -> bool:
    """Remove the stored token; whether there was one."""
    path = config_dir / ACCOUNT_FILE
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed
