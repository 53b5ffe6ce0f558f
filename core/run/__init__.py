"""The runner every forward pass goes through, and the --json payloads."""
