"""``python -m shared.package``: see shared/package/cli.py."""
import sys

from shared.package.cli import main

sys.exit(main())
