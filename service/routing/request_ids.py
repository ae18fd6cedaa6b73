"""A router's caller-chosen request ids: those being routed (reserved until recorded or released), those looked
up in a shared store before routing, and those whose record the shared store refused because another request
holds the id (their Feedback is refused here rather than labelling that other request). A mixin of Router
(router.py), sharing its `lock`, its cache of recent requests and its store."""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..errors import Conflict, StorageUnavailable, shown
from ..state.base import Store
from .types import Pending


class RequestIds:
    lock: threading.Lock
    store: Store
    _cache: OrderedDict[str, Pending]
    _cache_size: int

    def _init_ids(self) -> None:
        self._reserved: set[str] = set()  # caller-chosen ids of requests being routed, not yet recorded
        self._refused: OrderedDict[str, str] = OrderedDict()  # id -> the tenant whose record was refused

    def reserve(self, request_id: str) -> bool:
        """Claim a caller's id for a request about to be routed (until `record` or `release`); False when another
        call holds it or it was routed before: in memory (the last cache_size requests), else in the state store
        (older ones, and those routed before a restart) when only this process writes it."""
        with self.lock:
            if request_id in self._cache or request_id in self._reserved:
                return False
            self._reserved.add(request_id)
        # with a shared store the caller looks it up off the event loop (routed_before); an id two replicas route
        # at once is caught when the second record is written (a duplicate key: not stored, its request forgotten)
        if not self.store.shared and self.store.request_exists(request_id):
            self.release(request_id)
            return False
        return True

    def routed_before(self, request_id: str) -> bool:
        """Whether the shared store holds a request under this caller-chosen id (a retry after a timeout, an id
        reused, another replica's request). A database known to be down is not asked (each read waited about a
        second for it, holding one of the event loop's few threads: Routes with ids slowed to seconds while
        Route buffers its records), and one that fails the read answers no: its duplicate key still refuses
        the record when it commits."""
        if self.store.error:
            return False
        try:
            return self.store.request_exists(request_id)
        except StorageUnavailable:
            return False

    def release(self, request_id: str) -> None:
        """Give back a reserved id whose request was not routed after all (an error, a cancelled call)."""
        with self.lock:
            self._reserved.discard(request_id)

    def _refuse(self, request_id: str, tenant: str) -> None:
        """(under lock) The store refused `tenant`'s record under this id: another request holds it."""
        self._refused[request_id] = tenant
        while len(self._refused) > self._cache_size:
            self._refused.popitem(last=False)

    def _check_refused(self, request_id: str, stored: Pending) -> None:
        """A Feedback whose id names, in the store, a request of its own tenant while this router's request of
        that tenant under the id was refused: which answer it is about cannot be told (another tenant's stored
        request stays NOT_FOUND to it, its existence not revealed)."""
        if self._refused.get(request_id) == stored.tenant:
            raise Conflict(f"request_id {shown(request_id)} was routed twice (this router's request was not "
                           "stored: another request, routed first, holds the id), so this feedback cannot be "
                           "applied; use a new id per request")
