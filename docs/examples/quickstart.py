"""Run this script in two terminals: one process leads, the other waits, and
takes over at once when the leader is stopped (``kill PID``, Ctrl-C), or a
few seconds after the leader is killed (``kill -9 PID``)."""

import logging
import os
import sys

from consul_leader import Candidate, Follower, leader_only, on_elected, stop_on_signals

# Three threads print here; logging keeps their lines whole.
logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
log = logging.getLogger("reports")
log.setLevel(logging.INFO)

KEY = os.environ.get("QUICKSTART_KEY", "quickstart/reports/leader")
candidate = Candidate(KEY)  # the agent: $CONSUL_HTTP_ADDR, else 127.0.0.1:8500


@on_elected
def announce(candidate, fencing_token, **extra):
    log.info("elected: %s (fencing token %d)", candidate.identity, fencing_token)


@leader_only
def send_report():
    log.info("report sent by %s", candidate.identity)
    return "sent"


def job(stop_event):  # runs in a thread each time this process is elected
    while True:
        send_report()
        if stop_event.wait(10):  # set as soon as leadership ends
            return


if __name__ == "__main__":
    stop_on_signals()  # SIGTERM, Ctrl-C: release the lock at once, then exit
    follower = Follower(KEY).start()
    log.info("leader now: %s", follower.wait_for_leader(timeout=5))
    candidate.run(job, block=False)  # run for election; don't block
    if not candidate.wait_for_leadership(timeout=2):
        log.info("not the leader; send_report() returns %s", send_report())
    for leader in follower.changes():  # until SIGTERM or Ctrl-C
        log.info("leader now: %s", leader)
