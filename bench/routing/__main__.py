import sys

from bench.routing.run import main

sys.exit(main())
