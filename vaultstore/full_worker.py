"""Entry point of the full-backup helper process (see ``vaultstore.repo.split``).

Run as ``python -m vaultstore.full_worker JOURNAL`` by a backup, which sends
the request on stdin and reads the answer on stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vaultstore.repo.split import serve_half


def main(argv: list[str]) -> int:
    status = serve_half(Path(argv[0]), sys.stdin.buffer, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
