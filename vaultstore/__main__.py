"""``python -m vaultstore``."""

from vaultstore.cli.main import main

main()
