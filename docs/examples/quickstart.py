"""Run this script in two terminals: one process leads, the other waits, and
takes over at once when the leader is stopped (``kill PID``, Ctrl-C), or a
few seconds after the leader is killed (``kill -9 PID``)."""

import os

from consul_leader import Candidate, Follower, leader_only, on_elected, stop_on_signals

KEY = os.environ.get("QUICKSTART_KEY", "quickstart/reports/leader")
candidate = Candidate(KEY)  # the agent: $CONSUL_HTTP_ADDR, else 127.0.0.1:8500


@on_elected
def announce(candidate, fencing_token, **extra):
    print(f"elected: {candidate.identity} (fencing token {fencing_token})", flush=True)


@leader_only
def send_report():
    print("report sent by", candidate.identity, flush=True)
    return "sent"


def job(stop_event):  # runs in a thread each time this process is elected
    while True:
        send_report()
        if stop_event.wait(10):  # set as soon as leadership ends
            return


if __name__ == "__main__":
    stop_on_signals()  # SIGTERM, Ctrl-C: release the lock at once, then exit
    follower = Follower(KEY).start()
    print("leader now:", follower.wait_for_leader(timeout=5), flush=True)
    candidate.run(job, block=False)  # run for election; don't block
    if not candidate.wait_for_leadership(timeout=2):
        print("not the leader; send_report() returns", send_report(), flush=True)
    for leader in follower.changes():  # until SIGTERM or Ctrl-C
        print("leader now:", leader, flush=True)
