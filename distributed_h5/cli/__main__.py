"""``python -m distributed_h5.cli``: the same as the ``distributed-h5`` command."""

import sys

from . import main

sys.exit(main())
