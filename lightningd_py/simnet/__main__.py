"""`python -m lightningd_py.simnet --dir DIR [...]`: see lightningd_py.simnet.run."""

import sys

from lightningd_py.simnet.run import main

sys.exit(main())
