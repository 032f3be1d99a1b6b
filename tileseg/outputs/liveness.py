"""Whether the process named in a lock record still runs, where that can be proven.

A lock on an object store has no kernel to release it when its holder dies, so it carries a
lease. Waiting out the lease after a ``kill -9`` is needed only when the holder ran elsewhere:
on the same machine its process can be checked directly. "The same machine" must be proven, not
guessed from a host name: two containers can share a host name (host networking) but not a pid
namespace, and two machines can share a name ("ubuntu") but not a boot id. So a record carries
the host name, the kernel's boot id, the pid namespace and the process's start time; a holder
counts as gone only when the first three equal ours and its pid is absent, a zombie, or a newer
process that reused the pid (another start time). Anything unproven counts as alive: the caller
then waits for the lease, which is slow but safe.

Linux exposes all of this under ``/proc``. Elsewhere the boot id and namespace are unknown
(``None`` on both sides) and the host name and pid decide; on Windows no check is made at all
(``os.kill(pid, 0)`` would terminate the process there).
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from typing import Any


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name (which may hold spaces and parentheses):
    index 0 is the state, index 19 the start time in clock ticks after boot."""
    text = _read(f"/proc/{pid}/stat")
    if text is None or ")" not in text:
        return None
    return text.rsplit(")", 1)[1].split()


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks after boot (Linux), else None."""
    fields = _stat_fields(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class ProcessIdentity:
    """Who holds a lock: enough to tell later, on the same machine, whether it still runs."""

    host: str
    pid: int
    boot_id: str | None = None
    pid_namespace: str | None = None
    started_ticks: int | None = None

    @classmethod
    def current(cls) -> ProcessIdentity:
        pid = os.getpid()
        return cls(platform.node(), pid, _read("/proc/sys/kernel/random/boot_id"),
                   _pid_namespace(), start_ticks(pid))

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ProcessIdentity | None:
        """The identity a lock record names, or None when it names none (a foreign object)."""
        host, pid = record.get("host"), record.get("pid")
        if not isinstance(host, str) or not isinstance(pid, int):
            return None
        started = record.get("started_ticks")
        return cls(host, pid, record.get("boot_id"), record.get("pid_namespace"),
                   started if isinstance(started, int) else None)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    def same_machine(self, other: ProcessIdentity) -> bool:
        """True when both identities provably name processes on one running kernel and one pid
        namespace, so that a pid means the same process to both."""
        return (self.host, self.boot_id, self.pid_namespace) == (
            other.host, other.boot_id, other.pid_namespace)


def is_gone(holder: ProcessIdentity) -> bool:
    """True only when ``holder`` provably no longer runs (see the module docstring)."""
    here = ProcessIdentity.current()
    if os.name == "nt" or not here.same_machine(holder):
        return False
    if holder.pid == here.pid:
        return holder.started_ticks is not None and holder.started_ticks != here.started_ticks
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it runs, as another user
        pass
    fields = _stat_fields(holder.pid)
    if fields is None:  # no /proc: the signal said it runs
        return False
    if fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return True
    started = start_ticks(holder.pid)
    return (holder.started_ticks is not None and started is not None
            and started != holder.started_ticks)  # the pid was reused by a newer process
