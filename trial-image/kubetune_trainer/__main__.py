"""python -m kubetune_trainer: the same as the kubetune-train command."""

import sys

from kubetune_trainer.train import main

if __name__ == "__main__":
    sys.exit(main())
