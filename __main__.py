"""``python <app folder>``: what ``monai-deploy package`` puts in the MAP's app.json command."""

import sys

from ichseg import cli

# -h, a bad setting or a refused input answered before torch and the SDK load (see app.py)
PREPARED = cli.prepare_or_exit([sys.executable, *sys.argv])

from app import main  # noqa: E402

sys.exit(main(prepared=PREPARED))
