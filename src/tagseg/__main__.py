import sys

from tagseg.cli import main

sys.exit(main())
