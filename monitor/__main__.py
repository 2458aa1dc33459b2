"""`python -m monitor` is the `pool-monitor` command."""

import sys

from monitor.cli import main

sys.exit(main())
