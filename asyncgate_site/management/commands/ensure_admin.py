"""Make sure a superuser can log into the admin, and say how.

Creates ``--username`` (default ``admin``) with a fresh random password when no such user exists
and prints the password once. An existing user is left untouched: the command then says how to set
a new password instead of overwriting one somebody chose.
"""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create an admin superuser with a random password if missing; print how to log in."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin", help="Superuser name (default: admin).")
        parser.add_argument(
            "--url",
            default="http://127.0.0.1:8000/admin/",
            help="Admin URL to print (default: http://127.0.0.1:8000/admin/).",
        )

    def handle(self, *args, username: str, url: str, **options):
        User = get_user_model()
        user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser(username=username, email="", password=password)
            self.stdout.write(self.style.SUCCESS(f"Admin login created at {url}"))
            self.stdout.write(f"  username: {username}\n  password: {password}")
            self.stdout.write(
                "  (shown once; change it with: "
                f".venv/bin/python manage.py changepassword {username})"
            )
        else:
            self.stdout.write(f"Admin login: user {username!r} at {url}.")
            self.stdout.write(
                f"  Forgot the password? .venv/bin/python manage.py changepassword {username}"
            )
