import sys

from replengine.cli import main

sys.exit(main())
