import sys

from nvlaunch.cli import main

sys.exit(main())
