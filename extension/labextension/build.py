"""Build the JupyterLab frontend into ``prebuilt/`` and record what it was built from.

    npm ci && npm run build        # = python3 build.py: tsc, @jupyterlab/builder, build.json
    python3 build.py --check       # does prebuilt/ match the sources? (tests/test_lab_build.py)

``build.json`` holds a SHA-256 over the source files (path and bytes, in path order) and one over
the built files. CI never runs node: a test recomputes both and fails if the sources changed
without a rebuild, or if the committed build was edited by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "prebuilt"
RECORD = HERE / "build.json"
SOURCES = ("package.json", "package-lock.json", "tsconfig.json", "build.py", "src", "style")


def _files(roots: list[Path]) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        if root.is_file():
            files.append(root)
        elif root.is_dir():
            files += [p for p in root.rglob("*") if p.is_file()]
    return sorted(files, key=lambda p: p.relative_to(HERE).as_posix())


def digest(roots: list[Path]) -> str:
    """SHA-256 over each file's path (relative, POSIX) and bytes."""
    sha = hashlib.sha256()
    for path in _files(roots):
        sha.update(path.relative_to(HERE).as_posix().encode() + b"\0")
        sha.update(path.read_bytes() + b"\0")
    return sha.hexdigest()


def current() -> dict[str, str]:
    return {"sources": digest([HERE / s for s in SOURCES]), "prebuilt": digest([OUTPUT])}


def check() -> list[str]:
    """What does not match the record (empty: the committed build is the sources' build)."""
    try:
        recorded = json.loads(RECORD.read_text())
    except (OSError, ValueError) as exc:
        return [f"{RECORD.name} cannot be read ({exc}): run `npm ci && npm run build`"]
    now = current()
    problems = []
    if recorded.get("sources") != now["sources"]:
        problems.append("the frontend sources changed since prebuilt/ was built: "
                        "run `npm ci && npm run build` in extension/labextension and commit")
    if recorded.get("prebuilt") != now["prebuilt"]:
        problems.append("prebuilt/ is not what the last build wrote: rebuild, never edit it")
    return problems


def build() -> None:
    import jupyterlab  # the core packages the frontend shares (its staging folder)

    staging = Path(jupyterlab.__file__).parent / "staging"
    shutil.rmtree(HERE / "lib", ignore_errors=True)
    shutil.rmtree(OUTPUT, ignore_errors=True)
    subprocess.run(["npx", "tsc"], cwd=HERE, check=True)
    subprocess.run(["node", "node_modules/@jupyterlab/builder/lib/build-labextension.js",
                    "--core-path", str(staging), "."], cwd=HERE, check=True)
    RECORD.write_text(json.dumps(current(), indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare with build.json")
    if parser.parse_args().check:
        problems = check()
        print("\n".join(problems) or "prebuilt/ matches the sources")
        sys.exit(1 if problems else 0)
    build()
