"""``python <app folder>``: what ``monai-deploy package`` puts in the MAP's app.json command."""

import sys

from app import main

sys.exit(main())
