"""Watching a served model: field readings replayed to a running server (`bts replay`), and the report on what it served
(`bts monitor`): `report` computes it from the request log, `page` renders it as HTML."""
