"""``python -m prunectl`` (and ``torchrun -m prunectl``) run the CLI."""

from prunectl.cli import main

main()
