"""`python -m swarm.coordinator` is `swarm`."""

import sys

from swarm.coordinator.cli import main

sys.exit(main())
