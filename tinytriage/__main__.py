"""`python -m tinytriage` (also what `torchrun -m tinytriage` runs)."""

from tinytriage.cli import entry

if __name__ == "__main__":
    entry()
