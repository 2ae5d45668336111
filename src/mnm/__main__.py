"""``python -m mnm`` is the ``mnm`` console script."""

from mnm.cli import main

main()
