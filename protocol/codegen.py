"""Generate the committed protobuf and gRPC code from `protocol/proto`.

Run `python -m swarm.protocol.codegen` after editing a `.proto` file, and commit the result;
`--check` exits non-zero when the committed code has drifted from the `.proto` files (CI runs
the same comparison as a test). Needs the dev extra (grpcio-tools).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).parent / "proto"
GENERATED_DIR = Path(__file__).parent / "generated"
PROTO_FILES = ("swarm/v1/worker.proto",)

# protoc writes absolute imports that mirror the .proto path (`from swarm.v1 import ...`);
# the generated modules live in `swarm.protocol.generated`, so make them relative.
_ABSOLUTE_IMPORT = re.compile(r"^from swarm\.v1 import (\w+_pb2)", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Compile every proto into `out_dir` and return the files written."""
    from grpc_tools import protoc  # dev-only dependency, imported on demand

    with tempfile.TemporaryDirectory() as raw_dir:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={raw_dir}",
            f"--pyi_out={raw_dir}",
            f"--grpc_python_out={raw_dir}",
            *PROTO_FILES,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed for {PROTO_FILES}")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for produced in sorted(Path(raw_dir).rglob("*_pb2*.py*")):
            text = _ABSOLUTE_IMPORT.sub(r"from . import \1", produced.read_text())
            target = out_dir / produced.name
            target.write_text(text)
            written.append(target)
    return written


def drifted_files(committed_dir: Path = GENERATED_DIR) -> list[str]:
    """Names of generated files whose committed copy differs from a fresh generation."""
    with tempfile.TemporaryDirectory() as fresh_dir:
        fresh = {p.name: p.read_bytes() for p in generate(Path(fresh_dir))}
    drifted = []
    for name, content in fresh.items():
        committed = committed_dir / name
        if not committed.exists() or committed.read_bytes() != content:
            drifted.append(name)
    return drifted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if committed code drifted")
    args = parser.parse_args(argv)
    if args.check:
        drifted = drifted_files()
        if drifted:
            print(
                f"generated code is out of date: {', '.join(drifted)}; "
                "run `python -m swarm.protocol.codegen`",
                file=sys.stderr,
            )
            return 1
        print("generated code matches the .proto files")
        return 0
    for path in generate(GENERATED_DIR):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
