"""`python -m horizon`: the `horizon` command."""

from horizon.tui.cli.app import main

if __name__ == "__main__":
    raise SystemExit(main())
