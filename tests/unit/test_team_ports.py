"""The ports `make team-up` starts its services on: asked for, else the last ones when free, else free ones."""

from __future__ import annotations

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
