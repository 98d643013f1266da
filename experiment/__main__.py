"""`python -m experiment` is the same as the `cuedpain` command."""

import sys

from experiment.cli import main

if __name__ == "__main__":
    sys.exit(main())
