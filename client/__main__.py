"""`python -m swarm.client` is `swarmclient`."""

import sys

from swarm.client.cli import main

sys.exit(main())
