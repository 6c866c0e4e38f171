import sys

from kubetune.operator import main

sys.exit(main())
