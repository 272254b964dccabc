import os
import sys

from nvlaunch.cli import main

code = main()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)   # no interpreter teardown: see bin/nvlaunch
