"""``python -m videomla``: the ``videomla`` command (handy under ``torchrun -m``)."""

import sys

from .cli import main

sys.exit(main())
