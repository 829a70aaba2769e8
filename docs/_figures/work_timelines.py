"""Draws the two timelines of docs/concepts.rst ("Safety of the work"):
a graceful handover and a partition of the leader's host. Schematic, with
the default timing (ttl=3: lease 2.5 s, lock-delay 3 s); the measured
partition run is on the benchmarks page.

Run: ``python docs/_figures/work_timelines.py`` (needs matplotlib, from the
``bench`` extra); it rewrites the PNGs in docs/_static/.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "_static")

FLAG, JOB, LOCK = "#4c72b0", "#55a868", "#c4c4c4"


def bars(ax, y, spans, color, label=None):
    for i, (start, end) in enumerate(spans):
        ax.barh(y, end - start, left=start, height=0.5, color=color, label=label if i == 0 else None)


def handover() -> None:
    fig, ax = plt.subplots(figsize=(8, 2.8))
    # A resigns at 1.0; its job takes 0.6 s to return; deposed receivers 0.1 s; release at 1.7.
    bars(ax, 3, [(0, 1.7)], LOCK, "lock held (Consul)")
    bars(ax, 2.5, [(0, 1.0)], FLAG, "is_leader()")
    bars(ax, 2, [(0.02, 1.6)], JOB, "job")
    bars(ax, 1, [(1.705, 3.5)], LOCK)
    bars(ax, 0.5, [(1.71, 3.5)], FLAG)
    bars(ax, 0, [(1.72, 3.5)], JOB)
    for x, y, text in [(1.0, 3.45, "resign(): flag off,\nstop_event set"), (1.6, 2.35, "job returned,\n"
                       "deposed sent"), (1.7, 1.35, "lock released")]:
        ax.axvline(x, color="k", lw=0.6, ls=":")
        ax.text(x + 0.02, y, text, fontsize=7, va="top")
    ax.set_yticks([3, 2.5, 2, 1, 0.5, 0])
    ax.set_yticklabels(["A lock", "A flag", "A job", "B lock", "B flag", "B job"], fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_title("Graceful handover: B's job starts after A's returned", fontsize=9)
    ax.legend(fontsize=7, loc="lower left", ncol=3)
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "work_handover.png"), dpi=110)


def partition() -> None:
    fig, ax = plt.subplots(figsize=(8, 2.8))
    # Cut at 0; A's last proof at -0.5; lease ends at 2.0; job stopped then; new leader after
    # Serf marks the node failed (~5 s) plus the lock-delay (3 s).
    bars(ax, 2.5, [(-1, 2.0)], FLAG, "is_leader()")
    bars(ax, 2, [(-1, 2.1)], JOB, "job / command")
    bars(ax, 0.5, [(8.4, 11.5)], FLAG)
    bars(ax, 0, [(8.45, 11.5)], JOB)
    for x, y, text in [(0, 1.4, "A's host cut off"), (2.0, 1.4, "A's lease ends:\nwatchdog stops the work"),
                       (5.4, 3.0, "node marked failed:\nsession invalidated"),
                       (8.4, 3.0, "lock-delay over:\nB elected")]:
        ax.axvline(x, color="k", lw=0.6, ls=":")
        ax.text(x + 0.05, y, text, fontsize=7, va="top")
    ax.set_yticks([2.5, 2, 0.5, 0])
    ax.set_yticklabels(["A flag", "A work", "B flag", "B work"], fontsize=8)
    ax.set_ylim(-0.5, 3.1)
    ax.set_xlabel("seconds after the cut")
    ax.set_title("Partition: the old leader stops before anyone can win (defaults)", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "work_partition.png"), dpi=110)


if __name__ == "__main__":
    handover()
    partition()
