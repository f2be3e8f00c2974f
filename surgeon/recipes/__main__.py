"""``python -m surgeon.recipes NAME [--quick] [--out DIR] [--seed N] [--device D] [--no-progress]``."""

from surgeon.recipes.runner import main

main()
