"""``python -m synthrec.cli``: the same as the ``synthrec`` console script."""

from synthrec.cli import main

raise SystemExit(main())
