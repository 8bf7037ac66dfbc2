import sys

from hybridopt.cli import main

sys.exit(main())
