"""What the benchmarks share: the vocabulary of their generated data and the process
tree whose resident memory they sample.  Imported by the scripts, never run."""

from __future__ import annotations

import os
from pathlib import Path

#: The NATO alphabet, alpha to zulu.
NATO = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
    "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
    "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
]  # fmt: skip
#: Words of SQL and of an order book.
SHOP = [
    "select", "insert", "update", "order", "customer",
    "invoice", "payment", "shipped", "pending", "delivered",
]  # fmt: skip
#: The words of the generated rows (pipeline and MariaDB benchmarks).
WORDS = SHOP + NATO[:24]

PAGE = os.sysconf("SC_PAGE_SIZE")


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants right now (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def rss_bytes(pid: int) -> int:
    """Resident bytes of ``pid`` (0 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants right now."""
    return sum(rss_bytes(pid) for pid in process_tree(root))
