"""Data: the course corpus, record loading and validation, and the four cleaning dimensions (notebooks 01, 02)."""
