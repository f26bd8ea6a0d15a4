"""The JupyterLab panel's frontend ships prebuilt: CI checks it instead of running node.

``extension/labextension/build.py`` records, when it builds, a hash of the TypeScript/CSS
sources and one of the built files (``build.json``). Here both are recomputed: a source changed
without a rebuild, or a hand-edited build, fails with what to run. And the editable install put
the committed build where JupyterLab finds it (``jupyter labextension list``) and enabled the
server extension, so README's install command is all a user needs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

from lab_helpers import data_path

FRONTEND = Path(__file__).resolve().parent.parent / "extension" / "labextension"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _build_module():
    spec = importlib.util.spec_from_file_location("ldw_lab_build", FRONTEND / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_build_matches_its_sources() -> None:
    assert _build_module().check() == []


def test_the_check_sees_a_changed_source_and_an_edited_build(tmp_path, monkeypatch) -> None:
    build = _build_module()
    copy = tmp_path / "labextension"
    for name in ("package.json", "package-lock.json", "tsconfig.json", "build.py", "build.json"):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes((FRONTEND / name).read_bytes())
    for folder in ("src", "style", "prebuilt"):
        for path in (FRONTEND / folder).rglob("*"):
            if path.is_file():
                target = copy / path.relative_to(FRONTEND)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
    monkeypatch.setattr(build, "HERE", copy)
    monkeypatch.setattr(build, "OUTPUT", copy / "prebuilt")
    monkeypatch.setattr(build, "RECORD", copy / "build.json")
    assert build.check() == []
    with (copy / "src" / "index.ts").open("a") as handle:
        handle.write("\n// changed\n")
    assert [p.split(":")[0] for p in build.check()] == [
        "the frontend sources changed since prebuilt/ was built"]
    (copy / "src" / "index.ts").write_bytes((FRONTEND / "src" / "index.ts").read_bytes())
    style = copy / "prebuilt" / "static" / "style.js"
    style.write_text(style.read_text() + "\n")
    assert [p.split(":")[0] for p in build.check()] == [
        "prebuilt/ is not what the last build wrote"]


def test_the_install_puts_the_prebuilt_panel_where_jupyterlab_finds_it() -> None:
    env = {**os.environ}
    if data_path():
        env["JUPYTER_PATH"] = data_path()
    listed = subprocess.run([sys.executable, "-m", "jupyterlab.labextensions", "list"],
                            capture_output=True, text=True, env=env, timeout=120)
    text = ANSI.sub("", listed.stdout + listed.stderr)
    assert re.search(r"ldw-jupyterlab v\S+ enabled OK \(python, ldw\)", text), text
    installed = Path(sys.prefix, "share", "jupyter", "labextensions", "ldw-jupyterlab")
    assert (installed / "package.json").read_text() == \
        (FRONTEND / "prebuilt" / "package.json").read_text(), \
        "the installed panel is not the committed build: run pip install -e . again"
    config = Path(sys.prefix, "etc", "jupyter", "jupyter_server_config.d", "ldw.json")
    assert '"ldw.extension.lab": true' in config.read_text()
