"""Giving up a dump that cannot be saved (:func:`drgn_hvdump.api.abandon`).

``hvdump_release`` with ``force: true`` calls it: every release write of the
collector's plan, in its order, under the dump's lock, until the LPAR
re-registers. Checked against hvsim's record of the LPAR.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from drgn_hvdump import api
from drgn_hvdump.capture import open_capture
from drgn_hvdump.collect.ownership import DumpBusyError, DumpLock
from tests.collect_support import FUSE_MISSING, make_lpar, mounted

pytestmark = pytest.mark.skipif(bool(FUSE_MISSING), reason=FUSE_MISSING)


def test_abandon_releases_the_plan_under_the_lock(tmp_path: Path) -> None:
    lpar = make_lpar(tmp_path / "lpar", memory="768M")
    with mounted(lpar, tmp_path / "root") as root:
        planned = api.abandon(root, dry_run=True)
        assert planned.dump_waiting and planned.released
        assert open_capture(root).state().dump_waiting, "a dry run released something"
        # Another holder of the dump: refused, nothing released.
        lock = DumpLock(root, open_capture(root).lock_path)
        lock.acquire()
        try:
            with pytest.raises(DumpBusyError):
                api.abandon(root)
        finally:
            lock.release()
        assert open_capture(root).state().dump_waiting
        done = api.abandon(root)
        assert done.released == planned.released
        assert not done.dump_waiting
        again = api.abandon(root)
        assert again.released == [] and not again.dump_waiting
    st = lpar.status()
    assert not st["dump_waiting"] and st["protected"], "the LPAR did not re-register"
    rel = st["kernel"]["release"]
    assert rel["reserved_counter"] == rel["reserved_target"]
    assert rel["scratch_counter"] == rel["scratch_target"]
    # hvsim counted exactly the plan's writes: none twice, none left out.
    assert rel["writes"] == len(planned.released)
