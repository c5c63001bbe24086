import re
from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import call_command


def run(**options) -> str:
    out = StringIO()
    call_command("ensure_admin", stdout=out, **options)
    return out.getvalue()


@pytest.mark.django_db
def test_ensure_admin__creates_a_superuser_whose_printed_password_logs_in():
    output = run()
    password = re.search(r"password: (\S+)", output).group(1)
    user = authenticate(username="admin", password=password)
    assert user is not None and user.is_superuser and user.is_staff
    assert "http://127.0.0.1:8000/admin/" in output


@pytest.mark.django_db
def test_ensure_admin__never_reuses_a_fixed_password():
    first = re.search(r"password: (\S+)", run(username="one")).group(1)
    second = re.search(r"password: (\S+)", run(username="two")).group(1)
    assert first != second and len(first) >= 16


@pytest.mark.django_db
def test_ensure_admin__leaves_an_existing_user_and_password_alone():
    get_user_model().objects.create_superuser("admin", "", "chosen-by-staff-1")
    output = run()
    assert "password:" not in output
    assert "changepassword admin" in output
    assert authenticate(username="admin", password="chosen-by-staff-1") is not None
