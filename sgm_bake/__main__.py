"""`python -m sgm_bake` runs the command line."""

from sgm_bake.cli import main

main()
