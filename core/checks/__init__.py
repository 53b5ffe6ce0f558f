"""Checks a loaded model must pass: verify (quick and full) and the position-chunk self-check."""
