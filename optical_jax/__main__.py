import sys

from optical_jax.cli import main

sys.exit(main())
