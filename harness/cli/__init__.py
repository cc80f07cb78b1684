"""Command-line interface: a thin typer shell; each command parses options and calls the library."""
