import sys

from skyguard.daemon.main import main

sys.exit(main())
