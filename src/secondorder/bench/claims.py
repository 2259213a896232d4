"""Who may execute a run: the ownership and liveness half of the results store's claims.

A ``running`` row of :class:`~secondorder.bench.store.Store` names its ``owner``
(:func:`owner_id`: ``host:pid:uuid`` of the claiming process) and a ``heartbeat`` time.
:func:`claim_is_stale` decides whether another process may take such a row over (a dead
owner on this host, or a heartbeat older than the lease); :meth:`Store.claim_run
<secondorder.bench.store.Store.claim_run>` returns a :class:`Claim`. The transactions
themselves are in :mod:`secondorder.bench.store`.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LEASE_SECONDS", "Claim", "claim_is_stale", "owner_id"]

#: Seconds without a heartbeat after which another process may take a running run over.
LEASE_SECONDS = 60.0

_OWNER: tuple[int, str] | None = None


def owner_id() -> str:
    """``host:pid:uuid`` of this process (new in every process, forked ones included)."""
    global _OWNER
    if _OWNER is None or _OWNER[0] != os.getpid():
        _OWNER = (os.getpid(), f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}")
    return _OWNER[1]


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def claim_is_stale(owner: str | None, heartbeat: float | None, lease: float,
                   now: float | None = None) -> bool:
    """Whether a ``running`` row's claim may be taken over.

    Stale: no owner or heartbeat, a heartbeat older than ``lease`` seconds, an owner that
    is this very process (a run it abandoned, e.g. after ``KeyboardInterrupt``), or an
    owner process on this host that no longer exists.
    """
    now = time.time() if now is None else now
    if owner is None or heartbeat is None or now - heartbeat > lease:
        return True
    if owner == owner_id():
        return True
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit():
        return not _pid_alive(int(pid))
    return False


@dataclass(frozen=True)
class Claim:
    """Outcome of :meth:`~secondorder.bench.store.Store.claim_run`.

    Attributes:
        state: ``"claimed"`` (this process must run it), ``"done"`` (terminal already) or
            ``"busy"`` (another live process is running it).
        run_id: the run's row id (``None`` only for a key never seen).
    """

    state: str
    run_id: int | None
