"""`python -m basisrt`: the same command line as the `basisrt` script."""
import sys

from .cli import main

sys.exit(main())
