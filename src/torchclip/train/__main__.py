"""``python -m torchclip.train`` (what torchrun launches): see ``torchclip.train.cli``."""

from .cli import main

raise SystemExit(main())
