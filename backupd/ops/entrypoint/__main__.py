"""``python -m backupd.ops.entrypoint [run|plan|healthcheck]`` (container/entrypoint.sh)."""

import sys

from backupd.ops.entrypoint import main

sys.exit(main())
