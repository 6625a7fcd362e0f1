"""Entry point for ``python -m ptserve``."""

from ptserve.main import main

raise SystemExit(main())
