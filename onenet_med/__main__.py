import sys

from onenet_med.cli import main

sys.exit(main())
