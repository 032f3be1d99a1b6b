"""tileseg.outputs.liveness: a lock holder counts as gone only when it provably ran on this machine and
its process no longer runs (real processes: started, killed, reaped or not)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace

import pytest

from tileseg.outputs.liveness import ProcessIdentity, is_gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the proofs of identity come from /proc")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names nothing now
    return proc.pid


def test_a_running_process_is_not_gone() -> None:
    here = ProcessIdentity.current()
    assert here.boot_id and here.pid_namespace and here.started_ticks is not None
    assert not is_gone(here)
    parent = replace(here, pid=os.getppid(), started_ticks=None)  # alive, start unknown
    assert not is_gone(parent)


def test_a_dead_process_on_this_machine_is_gone() -> None:
    here = ProcessIdentity.current()
    assert is_gone(replace(here, pid=_dead_pid()))


def test_a_killed_process_not_yet_reaped_is_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(proc.pid, signal.SIGKILL)
        for _ in range(200):  # until the kernel has made it a zombie
            with open(f"/proc/{proc.pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            os.sched_yield()
        assert is_gone(replace(ProcessIdentity.current(), pid=proc.pid))
    finally:
        proc.kill()
        proc.wait()


def test_a_reused_pid_is_gone_but_an_unproven_machine_never_is() -> None:
    here = ProcessIdentity.current()
    parent = ProcessIdentity.from_record({**here.to_record(), "pid": os.getppid()})
    assert parent is not None
    from tileseg.outputs.liveness import start_ticks

    ticks = start_ticks(os.getppid())
    assert ticks is not None and not is_gone(replace(parent, started_ticks=ticks))
    assert is_gone(replace(parent, started_ticks=ticks + 1))  # a newer process holds that pid
    dead = replace(here, pid=_dead_pid())
    # a dead pid proves nothing on another host, boot or pid namespace: such holders wait
    for other in (replace(dead, host="elsewhere"), replace(dead, boot_id="another-boot"),
                  replace(dead, pid_namespace="pid:[1]"), replace(dead, boot_id=None)):
        assert not is_gone(other)


def test_records_without_an_identity_name_no_one() -> None:
    assert ProcessIdentity.from_record({}) is None
    assert ProcessIdentity.from_record({"host": "h", "pid": "12"}) is None
    here = ProcessIdentity.current()
    assert ProcessIdentity.from_record(here.to_record()) == here
