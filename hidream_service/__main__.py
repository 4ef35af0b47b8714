import sys

from hidream_service.cli import main

sys.exit(main())
