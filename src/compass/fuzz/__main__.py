"""`python -m compass.fuzz [OPTIONS]` is `compass fuzz [OPTIONS]`."""
import sys

from ..cli import main

sys.exit(main(["fuzz", *sys.argv[1:]]))
