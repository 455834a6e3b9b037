"""`python -m resnets ...` (and `torchrun -m resnets ...`): the same as the `resnets` command."""

import sys

from resnets.cli import main

sys.exit(main())
