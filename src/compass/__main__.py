"""`python -m compass` is the `compass` command."""
import sys

from .cli import main

sys.exit(main())
