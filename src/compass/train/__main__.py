"""`python -m compass.train RECIPE --stage STAGE [--resume]`: see `compass train --help`."""
import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
