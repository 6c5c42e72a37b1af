"""Named durable-write points, so tests can crash or fail a run at each one.

Plumbing calls :func:`point` just before and after each durable step (for
example ``"local.put.before-rename"``). By default nothing happens. Tests, and
the CLI when ``VAULTSTORE_FAULT_POINT`` is set, install a hook that kills the
process or raises at a chosen point; :data:`seen` lets a test enumerate every
point an operation passes through.
"""

from __future__ import annotations

from collections.abc import Callable

Hook = Callable[[str], None]

_hook: Hook | None = None
seen: list[str] = []
recording = False


def point(name: str) -> None:
    """Mark a durable-write point; runs the installed hook, if any."""
    if recording:
        seen.append(name)
    if _hook is not None:
        _hook(name)


def set_hook(hook: Hook | None) -> None:
    """Install (or with None, remove) the process-wide fault hook."""
    global _hook
    _hook = hook
