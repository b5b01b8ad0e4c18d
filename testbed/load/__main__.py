import sys

from testbed.load.cli import main


sys.exit(main())
