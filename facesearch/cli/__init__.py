"""The `facesearch` command line: thin Typer commands over the packages."""
