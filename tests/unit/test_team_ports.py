"""The ports `make team-up` starts its services on: asked for, else the last ones when free, else free ones."""

from __future__ import annotations

import re
import socket

import pytest

from bts.errors import BtsError
from bts.team import HOST, chosen_port, free_port, start


def test_a_port_asked_for_is_used_when_free_and_refused_in_one_line_when_taken() -> None:
    port = free_port()
    assert chosen_port(port, 0, "PostgreSQL") == port
    with socket.socket() as busy:
        busy.bind((HOST, port))
        busy.listen()
        with pytest.raises(BtsError, match=rf"^PostgreSQL port {port}: already in use on {HOST}; choose another"):
            chosen_port(port, 0, "PostgreSQL")
        assert chosen_port(None, port, "PostgreSQL") != port  # the last one is taken now: any free one
    assert chosen_port(None, port, "PostgreSQL") == port  # the last one, free again


@pytest.mark.parametrize("port", [0, 80, 70000])
def test_a_port_out_of_range_stops_team_up_before_anything_starts(tmp_path, port) -> None:
    with pytest.raises(BtsError, match=rf"^MLflow server port {port}: use 1024 to 65535$"):
        start(tmp_path / "team", server_port=port)
    assert not (tmp_path / "team").exists()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"127.0.0.1:*:*:postgres\n", "line 1 is not host:port:database:role:password"),
        (b"# comment\n\n127.0.0.1:*:*:postgres:secret\n", "no password for mlflow_reader"),
        (b"\xff\xfe\n", "cannot read it (not UTF-8 text)"),
    ],
)
def test_a_broken_password_file_is_one_line_and_new_passwords_are_made_only_before_postgresql_has_any(
    tmp_path, content: bytes, reason: str
) -> None:
    from bts.team import PASSWORD_FILE, Team, passwords

    team = Team(str(tmp_path), 0, 0)
    (tmp_path / PASSWORD_FILE).write_bytes(content)
    with pytest.raises(BtsError, match=rf"^{tmp_path / PASSWORD_FILE}: {re.escape(reason)}; remove it: `make team-up` makes new"):
        passwords(team)
    (tmp_path / PASSWORD_FILE).unlink()
    made = passwords(team)  # no PostgreSQL yet: new ones, owner-only
    assert set(made) == {"postgres", "mlflow_reader"} and oct((tmp_path / PASSWORD_FILE).stat().st_mode & 0o777) == "0o600"
    assert passwords(team) == made
    (team.pgdata).mkdir()
    (team.pgdata / "PG_VERSION").write_text("15\n")
    (team.pgdata / "pg_hba.conf").write_text("# METHOD can be trust or scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n")
    (tmp_path / PASSWORD_FILE).unlink()  # lost after PostgreSQL was given its passwords: never silently replaced
    with pytest.raises(BtsError, match=r"(?i)no such file or directory.*restore it from a backup"):
        passwords(team)
    (team.pgdata / "pg_hba.conf").write_text("host all all 127.0.0.1/32 trust\n")  # made before passwords: moved to them
    assert set(passwords(team)) == {"postgres", "mlflow_reader"}
