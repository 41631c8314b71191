import sys

from agentfense.cli import main

sys.exit(main())
