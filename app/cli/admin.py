"""Administration: ``save-search config`` (the settings in effect) and ``save-search api-key`` (keys, stored hashed
in the database)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from app.cli.common import DatabaseOpt, app, fail, open_settings

api_key_app = typer.Typer(help="API keys (stored hashed in the database).", no_args_is_help=True)
app.add_typer(api_key_app, name="api-key")


@api_key_app.command("create")
def api_key_create(name: Annotated[str, typer.Argument(help="Who or what uses the key.")],
                   database_url: DatabaseOpt = None) -> None:
    """Create a key; it is printed once and only its hash is stored."""
    from app.security import hash_key, new_key
    from indexer.storage.db import ApiKey, make_engine, session_factory
    from indexer.storage.migrate import init_db

    settings = open_settings(database_url)
    init_db(settings.db_url)
    key = new_key()
    with session_factory(make_engine(settings.db_url)).begin() as s:
        s.add(ApiKey(name=name, key_hash=hash_key(key)))
    typer.echo(key)


@api_key_app.command("list")
def api_key_list(database_url: DatabaseOpt = None) -> None:
    """List keys (names and ids; the keys themselves are not stored)."""
    from sqlalchemy import select

    from indexer.storage.db import ApiKey, make_engine, session_factory
    from indexer.storage.migrate import init_db

    settings = open_settings(database_url)
    init_db(settings.db_url)
    with session_factory(make_engine(settings.db_url))() as s:
        for k in s.scalars(select(ApiKey).order_by(ApiKey.id)):
            typer.echo(f"{k.id}\t{k.name}\t{'revoked' if k.revoked else 'active'}\t{k.created_at:%Y-%m-%d %H:%M}")


@api_key_app.command("revoke")
def api_key_revoke(key_id: int, database_url: DatabaseOpt = None) -> None:
    """Revoke a key by id."""
    from indexer.storage.db import ApiKey, make_engine, session_factory
    from indexer.storage.migrate import init_db

    settings = open_settings(database_url)
    init_db(settings.db_url)
    with session_factory(make_engine(settings.db_url)).begin() as s:
        key = s.get(ApiKey, key_id)
        if key is None:
            fail(f"no API key with id {key_id}")
        key.revoked = True
    typer.echo(f"revoked key {key_id}")


@app.command("config")
def config(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Print the settings in effect (environment variables and defaults), secrets masked; a wrong value is an
    error that names its variable."""
    rows = open_settings().effective()
    if as_json:
        typer.echo(json.dumps({variable: value for variable, _, value in rows}, indent=2))
        return
    width = max(len(variable) for variable, _, _ in rows)
    for variable, _, value in rows:
        typer.echo(f"{variable:<{width}}  {value}")
