"""`python -m tinytriage` (also what `torchrun -m tinytriage` runs)."""

from tinytriage.cli import main

if __name__ == "__main__":
    main()
