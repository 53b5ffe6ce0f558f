"""The distribution as users get it: build the wheel and sdist, install the wheel, run every command."""
