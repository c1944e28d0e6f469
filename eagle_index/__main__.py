"""`python -m eagle_index` runs the CLI."""

from eagle_index.cli import main

main()
