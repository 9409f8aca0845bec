"""``python -m data``: see :mod:`data.cli`."""
from .cli import main

if __name__ == "__main__":
    main()
