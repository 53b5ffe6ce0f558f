"""horizon\x27s terminal front ends: the Typer CLI (cli/) and the Textual inspector."""
