import sys

from market.exchange.cli import main

sys.exit(main())
