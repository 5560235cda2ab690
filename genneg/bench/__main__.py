import sys

from genneg.bench.run import main

sys.exit(main())
