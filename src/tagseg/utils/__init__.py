"""Small shared helpers (I/O)."""
