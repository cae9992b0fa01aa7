"""`python -m facesearch`: the command line."""

from facesearch.cli.main import main

main()
