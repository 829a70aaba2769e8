"""A process forked while its Elector is busy winning keys: the child
inherits none of the elector's locks, queues or threads, and its exit
(which stops every elector of the process) never hangs on a lock that a
thread of the parent held at the fork."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import List

from consul_leader import Elector
from consul_leader.testing import ConsulAgent

FORKS = 100
KEYS = 100

#: How long a child may take to stop its inherited elector and exit: it
#: sends no request, so this bounds a hang, not a speed.
CHILD_BOUND = 5.0

#: Enough hung children to fail on: the test ends well within its timeout.
ENOUGH = 3


def exited_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False


def test_children_forked_during_elections_never_hang_on_exit(consul_agent: ConsulAgent, prefix: str) -> None:
    elector = Elector(prefix, identity="parent", address=consul_agent.address, ttl=1)
    candidacies = [elector.candidate(f"k{i}") for i in range(KEYS)]
    busy = threading.Event()

    def churn() -> None:
        # Terms start and end all the time: the worker holds the elector's
        # lock often, and at some forks.
        i = 0
        while not busy.is_set():
            candidacies[i % KEYS].resign()
            i += 1
            time.sleep(0.005)

    def ask() -> None:
        # Another thread of the application asks whether it leads (a health
        # endpoint, a scheduler): it holds the elector's lock at many forks.
        while not busy.is_set():
            elector.is_leader()

    elector.start()
    threads = [threading.Thread(target=churn, daemon=True), threading.Thread(target=ask, daemon=True)]
    hung: List[int] = []
    try:
        for thread in threads:
            thread.start()
        for n in range(FORKS):
            pid = os.fork()
            if pid == 0:
                try:
                    elector.stop()  # what the child's exit does (process.stop_all)
                finally:
                    os._exit(0)
            if not exited_within(pid, CHILD_BOUND):
                hung.append(n)
                if len(hung) >= ENOUGH:
                    break
            time.sleep(0.02)
    finally:
        busy.set()
        for thread in threads:
            thread.join(5)
        elector.stop()
    print(f"{len(hung)} of {FORKS} children forked during elections hung in stop()")
    assert hung == [], f"children {hung} of {FORKS} hung in stop()"
