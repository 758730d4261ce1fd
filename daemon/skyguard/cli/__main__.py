import sys

from skyguard.cli.main import main

sys.exit(main())
