"""Operations: one function per user-level task, usable from Python."""
