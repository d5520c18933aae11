"""``python -m captioner`` (and ``torchrun -m captioner train ...``)."""
import sys

from .cli import main

sys.exit(main())
