"""Watching a served model from the field's side: readings turned into scoring requests and replayed to a running server."""
