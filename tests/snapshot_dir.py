"""Where the suite's SVG snapshots live: snapshots/<test module>/ at the top of the repository.

pytest-textual-snapshot (through syrupy) would put them under tests/__snapshots__/; the project
keeps them at the top level, where the README embeds them. tests/conftest.py imports
``snapshot`` from here, which overrides syrupy's fixture of the same name.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pytest_textual_snapshot import SVGImageExtension
from syrupy.assertion import SnapshotAssertion

SNAPSHOT_DIR = Path(__file__).resolve().parent.parent / "snapshots"


class TopLevelSVGExtension(SVGImageExtension):
    """SVG snapshots under snapshots/<test module>/ instead of tests/__snapshots__/."""

    @classmethod
    def dirname(cls, *, test_location) -> str:  # type: ignore[no-untyped-def, override]
        return str(SNAPSHOT_DIR / test_location.basename)


class TopLevelSnapshotAssertion(SnapshotAssertion):
    # snap_compare asks for the plugin's SVG extension; hand it ours, which only moves the files.
    def use_extension(self, extension_class=None):  # type: ignore[no-untyped-def]
        if extension_class is SVGImageExtension:
            extension_class = TopLevelSVGExtension
        return super().use_extension(extension_class)


@pytest.fixture
def snapshot(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    return TopLevelSnapshotAssertion(
        update_snapshots=snapshot.update_snapshots,
        extension_class=snapshot.extension_class,
        test_location=snapshot.test_location,
        session=snapshot.session,
    )
