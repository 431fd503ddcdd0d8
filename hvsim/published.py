"""The LPAR's state as its directory publishes it, shared by every process that opens it.

:class:`PublishedState` takes the directory's lock (shared to read,
exclusive to change), reloads ``state.json`` when another process changed
it, hands out the typed :class:`hvsim.state.LparState`, and saves a change
atomically when it succeeds. It also owns the memory reader, whose layers
and snapshots follow each reload.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from .config import LparConfig
from .layers import collect_garbage
from .memory import Layer, MemoryReader
from .state import LparState
from .store import LparStore, StoreError

__all__ = ["PublishedState"]


class PublishedState:
    """One :class:`hvsim.lpar.Lpar` object's view of its directory's state (see the module)."""

    def __init__(self, store: LparStore, config: LparConfig) -> None:
        self.store = store
        self.lock = threading.RLock()
        self._json: dict[str, Any] | None = None
        self._st: LparState | None = None
        self._layers: dict[str, Layer] = {}
        self._snapshots: dict[str, list[str]] = {}
        self.reader = MemoryReader(
            store,
            self._layers,
            self._snapshots,
            page_size=config.page_size,
            mix=config.mix,
            big_endian=config.big_endian,
        )

    def close(self) -> None:
        """Close cached file descriptors (the object stays usable)."""
        with self.lock:
            self.store.close()
            self.reader.close()

    def _load(self) -> None:
        data = self.store.load_state()
        if data is None:
            self._json = self._st = None
            return
        if self._st is not None and data.get("serial") == self._st.serial:
            return
        st = LparState.from_json(data)
        self._json, self._st = data, st
        self._layers.clear()
        self._layers.update(st.layers)
        self._snapshots.clear()
        self._snapshots.update(st.snapshots)
        files = [layer.file for layer in self._layers.values() if layer.file]
        self.store.forget_data(files)
        self.reader.forget(files)

    @contextlib.contextmanager
    def reading(self) -> Iterator[LparState]:
        """Shared lock, state reloaded if another process changed it (do not change it)."""
        with self.lock, self.store.locked(exclusive=False):
            if self.store.state_changed() or self._st is None:
                self._load()
            if self._st is None:
                raise StoreError(f"{self.store.path}: LPAR has no state (creation was interrupted)")
            yield self._st

    @contextlib.contextmanager
    def mutate(self) -> Iterator[LparState]:
        """Exclusive lock around a change; the state is saved (atomically) on success.

        The change works on a fresh copy; an exception leaves the published
        state untouched (a data file it wrote is unreferenced and removed by
        the next change).
        """
        with self.lock, self.store.locked(exclusive=True):
            if self.store.state_changed() or self._st is None:
                self._load()
            work = LparState() if self._json is None else LparState.from_json(self._json)
            yield work
            work.serial += 1
            collect_garbage(work)
            self.store.save_state(work.to_json())
            referenced = {layer.file for layer in work.layers.values() if layer.file}
            self.store.remove_data(set(self.store.list_data()) - referenced)
            self._load()

    def truth_stack(self, st: LparState) -> list[str]:
        """The layers of the last dump's ground truth (the current memory before any dump)."""
        return self._snapshots[st.truth] if st.truth else st.stack
