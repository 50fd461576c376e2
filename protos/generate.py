"""Regenerate the Python gRPC code in protos/gatehouse/v1 from the .proto files.

`python protos/generate.py --check` regenerates into a temporary directory and fails when the
committed code differs, so CI catches a .proto change committed without its generated code.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "gatehouse" / "v1"
BIN = Path(sys.executable).parent
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def generate(out: Path) -> None:
    """Run protoc with the pinned grpcio-tools and mypy-protobuf plugins."""
    protos = sorted(str(p.relative_to(ROOT)) for p in PACKAGE.glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        # The mypy plugins are installed beside this interpreter, not necessarily on PATH.
        f"--plugin=protoc-gen-mypy={BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


def generated(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(SUFFIXES))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        fresh = out / "gatehouse" / "v1"
        if check:
            stale = [
                name
                for name in sorted(set(generated(fresh)) | set(generated(PACKAGE)))
                if not (PACKAGE / name).exists()
                or not (fresh / name).exists()
                or not filecmp.cmp(PACKAGE / name, fresh / name, shallow=False)
            ]
            if stale:
                sys.exit(f"generated code is stale: {', '.join(stale)}; run `make protos`")
            print("generated code is up to date")
            return
        for name in generated(PACKAGE):
            (PACKAGE / name).unlink()
        for name in generated(fresh):
            shutil.copy(fresh / name, PACKAGE / name)
        print(f"generated {len(generated(fresh))} files in {PACKAGE.relative_to(ROOT.parent)}")


if __name__ == "__main__":
    main()
