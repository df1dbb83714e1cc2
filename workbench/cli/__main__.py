"""`python -m workbench.cli ...`: how `sweep --workers` starts its worker processes."""

from workbench.cli import main

main()
