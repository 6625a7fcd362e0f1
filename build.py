#!/usr/bin/env python3
"""Build, test and publish the pytorch-cuda images: see `python build.py --help`."""

import sys

from pytorch_cuda.cli import main

if __name__ == "__main__":
    sys.exit(main())
