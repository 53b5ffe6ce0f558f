"""Which packages the distribution holds; every other piece of metadata is in pyproject.toml.

The repository's top level keeps core/ and tui/ as plain folders; installed, they are
horizon.core and horizon.tui, and core/api/ is the top-level package horizon. Packages are found,
not listed, so a new folder cannot be left out (tests/test_distribution.py compares the built
wheel with the tree). Namespace discovery also finds the data folders (core/data/), which are
packages without an __init__.py as far as Python's imports are concerned.
"""

from setuptools import find_namespace_packages, setup

PACKAGE_DIR = {"horizon": "core/api", "horizon.core": "core", "horizon.tui": "tui"}
NOT_SOURCE = ["*.__pycache__", "*.__pycache__.*"]
PACKAGES = [
    "horizon",
    *("horizon." + name for name in find_namespace_packages("core/api", exclude=NOT_SOURCE)),
    *("horizon." + name for name in find_namespace_packages(include=["core", "core.*", "tui", "tui.*"],
                                                             exclude=["core.api", "core.api.*", *NOT_SOURCE])),
]

setup(package_dir=PACKAGE_DIR, packages=PACKAGES)
