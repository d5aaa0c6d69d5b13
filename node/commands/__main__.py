"""``python -m node.commands``: the ``dicom-node`` command."""

import sys

from node.commands import main

sys.exit(main())
