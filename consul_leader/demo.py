"""``consul-leader demo``: a real election with failover, on a throwaway
local Consul agent.

Three candidate processes run for one key. The demo shows who leads, makes
the leader resign (a graceful handover), kills the next leader with SIGKILL
(a crash failover), prints a timeline with the measured times, and stops
everything, leaving no process behind.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any, Dict, List, Optional

__all__ = ["main"]


def _child(address: str, key: str, name: str, ttl: float) -> int:
    """One candidate process: prints its events as JSON lines; SIGUSR1 makes
    it resign, SIGTERM makes it leave."""
    from . import Candidate, deposed, elected, stop_on_signals

    def emit(event: str, **fields: Any) -> None:
        print(json.dumps({"t": time.monotonic(), "who": name, "event": event, **fields}), flush=True)

    candidate = Candidate(key, identity=name, address=address, ttl=ttl)
    elected.connect(lambda sender, fencing_token: emit("elected", token=fencing_token), sender=candidate,
                    weak=False)
    deposed.connect(lambda sender, reason: emit("deposed", reason=reason), sender=candidate, weak=False)
    resign_requested = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: resign_requested.set())
    stop_on_signals((signal.SIGTERM,))
    candidate.start()
    emit("started", pid=os.getpid())
    while candidate.running:
        if resign_requested.wait(0.2):
            resign_requested.clear()
            emit("resigning")
            candidate.resign()
    return 0


class _Demo:
    def __init__(self, out: IO[str], ttl: float) -> None:
        self.out = out
        self.ttl = ttl
        self.events: List[Dict[str, Any]] = []
        self.changed = threading.Condition()
        self.procs: Dict[str, "subprocess.Popen[str]"] = {}
        self.t0 = time.monotonic()
        self._out_lock = threading.Lock()

    def say(self, text: str) -> None:
        self._line(f"[{time.monotonic() - self.t0:7.3f}s] {text}")

    def _line(self, text: str) -> None:
        # One write under a lock: print() writes the text and the newline
        # apart, and the reader threads of the candidates print too.
        with self._out_lock:
            self.out.write(text + "\n")
            self.out.flush()

    def spawn(self, address: str, key: str, name: str) -> None:
        cmd = [sys.executable, "-m", "consul_leader.demo", "--child", address, key, name, str(self.ttl)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self.procs[name] = proc
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: "subprocess.Popen[str]") -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self.changed:
                self.events.append(event)
                self.changed.notify_all()
            detail = {"elected": f"elected (fencing token {event.get('token')})",
                      "deposed": f"deposed ({event.get('reason')})", "started": "started, running for election",
                      "resigning": "resigns"}.get(event["event"], event["event"])
            self._line(f"[{event['t'] - self.t0:7.3f}s]   {event['who']}: {detail}")

    def wait_for(self, event: str, after: float, exclude: Optional[str] = None,
                 timeout: float = 60.0) -> Dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for e in self.events:
                    if e["event"] == event and e["t"] >= after and e["who"] != exclude:
                        return e
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {event!r} event within {timeout}s")
                self.changed.wait(remaining)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: Optional[List[str]] = None) -> int:
    """Run the demo; returns the exit status (0 when every step worked)."""
    from .cli.parser import duration

    parser = argparse.ArgumentParser(
        prog="consul-leader demo",
        description="A real election with failover, on a throwaway local Consul agent: three candidate processes "
                    "run for one key; the demo makes the leader resign, kills the next one, prints a timeline "
                    "with the measured times, and leaves no process behind.")
    parser.add_argument("--ttl", "-ttl", type=duration, default=3.0, metavar="DURATION",
                        help="the candidates' ttl knob, as 3s, 1500ms or plain seconds (default 3s)")
    parser.add_argument("--child", nargs=4, metavar=("ADDRESS", "KEY", "NAME", "TTL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        address, key, name, ttl = args.child
        return _child(address, key, name, float(ttl))

    from .testing import ConsulAgent, find_consul

    try:
        binary = find_consul()
    except FileNotFoundError as exc:
        print(f"consul-leader demo: {exc}", file=sys.stderr)
        return 2
    demo = _Demo(sys.stdout, args.ttl)
    demo.say(f"starting a throwaway Consul agent ({binary})")
    agent = ConsulAgent(binary)
    agent.start()
    key = "consul-leader-demo/leader"
    results: Dict[str, float] = {}
    try:
        demo.say(f"agent ready at {agent.address}; starting 3 candidates for key {key!r} (ttl={args.ttl:g}s); "
                 f"the key is new and its roster shows nobody who led it, so its first holder leads at once")
        for name in ("alpha", "bravo", "charlie"):
            demo.spawn(agent.address, key, name)
        first = demo.wait_for("elected", demo.t0)
        demo.say(f"first leader: {first['who']}")

        time.sleep(1.0)
        demo.say(f"asking {first['who']} to resign (graceful handover)")
        demo.procs[first["who"]].send_signal(signal.SIGUSR1)
        resigned = demo.wait_for("resigning", first["t"], timeout=30)
        second = demo.wait_for("elected", resigned["t"], exclude=first["who"])
        results["handover"] = second["t"] - resigned["t"]
        demo.say(f"new leader: {second['who']}; graceful handover took {results['handover'] * 1000:.1f} ms")

        time.sleep(1.0)
        demo.say(f"killing {second['who']} with SIGKILL (crash failover)")
        killed_at = time.monotonic()
        demo.procs[second["who"]].kill()
        third = demo.wait_for("elected", killed_at, exclude=second["who"])
        results["failover"] = third["t"] - killed_at
        demo.say(f"new leader: {third['who']}; crash failover took {results['failover']:.2f} s "
                 f"(check TTL {args.ttl:g} s + lock-delay; `consul lock` takes about 43 s)")
    except TimeoutError as exc:
        demo.say(f"demo failed: {exc}")
        print(agent.log_tail(), file=sys.stderr)
        return 1
    finally:
        demo.say("stopping the candidates and the agent")
        demo.stop_all()
        agent.stop()
        agent.__exit__(None, None, None)

    leaders = [e for e in demo.events if e["event"] == "elected"]
    tokens = [e["token"] for e in leaders]
    print("\nsummary", file=sys.stdout)
    print(f"  terms (leader, fencing token): {[(e['who'], e['token']) for e in leaders]}")
    print(f"  fencing tokens strictly increase: {all(a < b for a, b in zip(tokens, tokens[1:]))}")
    print(f"  graceful handover: {results['handover'] * 1000:.1f} ms")
    print(f"  crash failover:    {results['failover']:.2f} s")
    print("  no process left behind:", all(p.poll() is not None for p in demo.procs.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
