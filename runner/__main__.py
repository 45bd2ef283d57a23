import sys

from .cli import main

if __name__ == "__main__":  # child processes of a Dask LocalCluster import this module again
    sys.exit(main())
