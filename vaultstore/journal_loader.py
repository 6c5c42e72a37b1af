"""Entry point of the journal loader process (see ``Journal.bulk_load``).

Run as ``python -m vaultstore.journal_loader DB LSN`` by the parent, which
streams records on stdin and reads the answer on stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path

from vaultstore.journal import serve_bulk_load


def main(argv: list[str]) -> int:
    path, lsn = Path(argv[0]), int(argv[1])
    status = serve_bulk_load(path, lsn, sys.stdin.buffer, sys.stdout.buffer)
    sys.stdout.buffer.flush()
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
