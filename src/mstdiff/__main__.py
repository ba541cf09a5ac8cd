"""``python -m mstdiff ...`` (and ``torchrun -m mstdiff train ...``): the ``mstdiff`` command line."""

from mstdiff.cli import main

if __name__ == "__main__":
    main()
