"""Pure-Python building blocks of the pair-construction methods (no I/O)."""
