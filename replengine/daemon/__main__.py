import sys

from replengine.daemon import main

sys.exit(main())
