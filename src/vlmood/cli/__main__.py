"""``python -m vlmood.cli`` (and ``torchrun -m vlmood.cli``)."""

import sys

from vlmood.cli import main

sys.exit(main())
