import sys

from llamapod.cli.main import main

sys.exit(main())
