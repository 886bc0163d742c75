"""``python -m backupd``: the CLI."""

from backupd.cli import main

if __name__ == "__main__":
    main()
