#!/usr/bin/env python
"""Django's command-line utility for servicedesk."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "servicedesk.settings")
    from servicedesk.configuration import keep_new_files_private

    # Before settings create DATA_DIR: migrate creates the SQLite database, mailidle writes
    # broker messages; every file of the desk is for its own user only.
    keep_new_files_private()
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
