"""Nothing executable travels or loads: no pickle (or its relatives), no `torch.load` without
`weights_only=True`, no numpy pickles, no remote code, no eval/exec, anywhere in the package.

A source scan, because the rule is about every code path, including ones no test reaches. The
loaders' own refusals (pickle checkpoints, unknown architectures, hostile payloads) are tested
where they live; this guards against a new path appearing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("client", "compression", "coordinator", "models", "protocol", "scheduler")

FORBIDDEN = {
    "a pickle-family module": re.compile(
        r"^\s*(import|from)\s+(pickle|cPickle|_pickle|dill|cloudpickle|joblib|shelve|marshal)\b",
        re.MULTILINE,
    ),
    "pickle used through another name": re.compile(r"\bpickle\.(loads?|dumps?|Unpickler)\b"),
    "numpy pickles": re.compile(r"allow_pickle\s*=\s*True"),
    "remote code": re.compile(r"trust_remote_code\s*=\s*True"),
    "eval or exec of a string": re.compile(r"(?<![\w.])(eval|exec)\s*\("),
    "unsafe YAML": re.compile(r"\byaml\.(load|unsafe_load)\s*\("),
}
TORCH_LOAD = re.compile(r"\btorch\.load\s*\(")


def sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_the_scan_sees_the_package() -> None:
    files = sources()
    assert len(files) > 50
    assert ROOT / "client" / "worker.py" in files


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_path_loads_executable_data(path: Path) -> None:
    text = path.read_text()
    for what, pattern in FORBIDDEN.items():
        match = pattern.search(text)
        assert match is None, f"{what} at {path.name}:{text[: match.start()].count(chr(10)) + 1}"
    for match in TORCH_LOAD.finditer(text):
        call = text[match.start() : text.find(")", match.end()) + 1]
        assert "weights_only=True" in call, f"torch.load without weights_only=True: {call}"


@pytest.mark.parametrize(
    "line",
    [
        "import pickle",
        "from cloudpickle import dumps",
        "x = pickle.loads(data)",
        "np.load(f, allow_pickle=True)",
        "AutoModel.from_pretrained(p, trust_remote_code=True)",
        "eval(source)",
        "yaml.load(text)",
    ],
)
def test_the_scan_would_catch(line: str) -> None:
    assert any(pattern.search(line) for pattern in FORBIDDEN.values()), line


def test_model_eval_is_not_mistaken_for_eval() -> None:
    assert not any(pattern.search("model.eval()") for pattern in FORBIDDEN.values())
