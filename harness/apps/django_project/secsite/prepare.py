"""Create the SQLite database and the test users: ``python -m secsite.prepare`` (run from
harness/apps/django_project with SECSITE_DB set). Each user's e-mail address is
``<name>@example.com``."""

from __future__ import annotations

import os

USERS = {"alice": "correct horse battery staple", "bob": "tr0ub4dor&3-bob-password"}
#: A staff account (may sign in to the admin); alice and bob have no staff status.
STAFF = {"carol": "staff-carol-0ff1ce-passphrase"}


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "secsite.settings")
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    for name, password in USERS.items():
        User.objects.create_user(name, email=f"{name}@example.com", password=password)
    for name, password in STAFF.items():
        User.objects.create_user(
            name, email=f"{name}@example.com", password=password, is_staff=True
        )


if __name__ == "__main__":
    main()
