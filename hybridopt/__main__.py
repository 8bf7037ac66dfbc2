import sys

from hybridopt.entry.cli import main

sys.exit(main())
