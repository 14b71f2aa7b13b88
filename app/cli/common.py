"""What every ``save-search`` command shares: the Typer app, logging, errors, and the settings and services a
command opens."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from pydantic import BaseModel

    from indexer.services import Services
    from indexer.settings import Settings

app = typer.Typer(
    name="save-search",
    help="Text-to-video search that understands what is said: the SAVE model, its training and evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
experiment_app = typer.Typer(help="Reproducible experiments.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("faiss.loader", "alembic", "httpx", "faster_whisper"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


def fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def echo_model(model: BaseModel) -> None:
    """An API response as the command's JSON output (the same text in-process and against a server)."""
    typer.echo(json.dumps(model.model_dump(mode="json"), indent=2))


def open_settings(database_url: str | None = None, model: str | None = None) -> Settings:
    """The environment's settings with the command's options on top; a wrong value ends the command with its
    reason (naming the variable)."""
    from indexer.settings import Settings, SettingsError

    try:
        return Settings.from_env(database_url=database_url, model=model)
    except SettingsError as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits


def open_services(settings: Settings) -> Services:
    """Load what the command needs (database, encoders, indexes) and say which model mode it runs in."""
    from indexer.enums import ModelMode
    from indexer.services import Services

    services = Services(settings)
    status = services.encoder.status()
    typer.secho(f"model mode: {status.mode} - {status.reason}", err=True,
                fg=typer.colors.YELLOW if status.mode != ModelMode.SAVE_FUSED else typer.colors.GREEN)
    return services


DatabaseOpt = Annotated[str | None, typer.Option("--database-url", help="Default: $SAVE_SEARCH_DATABASE_URL or "
                                                                       "SQLite under $SAVE_SEARCH_HOME.")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="Config name, checkpoint folder or authors' .bin "
                                                             "(default: $SAVE_SEARCH_MODEL or save-b32).")]
ServerOpt = Annotated[str | None, typer.Option(
    "--server", envvar="SAVE_SEARCH_SERVER", show_default=False,
    help="URL of a running save-search server (e.g. http://host:8000): work through its API instead of "
         "in-process.")]
ApiKeyOpt = Annotated[str | None, typer.Option(
    "--api-key", envvar="SAVE_SEARCH_API_KEY", show_default=False,
    help="API key for --server (prefer the environment variable: a command line is visible to other users).")]


def moment_line(m: Any) -> str:
    """A moment (the service's or the API's: start, end, text, source) as the search command prints it."""
    where = "on screen, " if m.source == "screen" else ""
    return f"[{where}{m.start:.1f}-{m.end:.1f}s] {m.text}"


def echo_results(results: Sequence[Any]) -> None:
    """Search results (the service's or the API's) as the search command prints them, in-process or on a server:
    one line per result with its best moment, its other moments on indented lines starting with "+"."""
    if not results:
        typer.echo("no results")
    for rank, r in enumerate(results, 1):
        moment = f" {moment_line(r.segment)}" if r.segment else ""
        typer.echo(f"{rank:>2}. {r.filename} (video {r.video_id}) score {r.score:.3f}{moment}")
        for m in r.moments[1:]:
            typer.echo(f"      + {moment_line(m)} (score {m.score:.3f})")
