"""The `cortex` command: parse flags, call one function, turn a CortexError into a message."""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import click

from cortex import __version__
from cortex.errors import CortexError

EXIT_ERROR = 1


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cortex")
def cli() -> None:
    """Cortex serves Cerebrium Cortex apps (main.py + cerebrium.toml) on your own machine.

    Every public function in main.py becomes POST /v4/{project_id}/{app_name}/{function}.
    """


@cli.command()
@click.argument("app_dir", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Loopback by default; 0.0.0.0 serves every interface.",
)
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port to listen on; 0 lets the system choose a free one.",
)
@click.option(
    "--project-id",
    envvar="CORTEX_PROJECT_ID",
    default=None,
    help="Project id in the URL path (env CORTEX_PROJECT_ID).  [default: p-local]",
)
@click.option(
    "--store",
    envvar="CORTEX_STORE",
    default=None,
    help="Where async runs are kept (env CORTEX_STORE).  [default: sqlite:///APP_DIR/.cortex/runs.db]",
)
@click.option("--reload", is_flag=True, help="Restart when files in APP_DIR change (development only).")
@click.option("--debug", is_flag=True, help="Debug logging, and full tracebacks for startup errors.")
@click.option(
    "--access-log",
    is_flag=True,
    help="Log every request (off by default: it costs ~10% throughput).",
)
@click.option(
    "--auth/--no-auth",
    default=None,
    help="Require a JWT bearer token on every call (env CORTEX_AUTH). "
    "[default: on when cerebrium.toml has disable_auth = false]",
)
@click.option(
    "--env-file",
    default=None,
    type=click.Path(dir_okay=False),
    help="A .env file (KEY=value lines) loaded before main.py is imported; "
    "variables already set in the environment win.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="text: for people (rich on a terminal); json: one object per line on stderr "
    "(env CORTEX_LOG_FORMAT).  [default: text]",
)
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=None,
    help="Server processes sharing the port and the run store; each runs async runs too "
    "(env CORTEX_WORKERS). Not with --reload or a custom runtime.  [default: 1]",
)
def serve(
    app_dir: Path,
    host: str,
    port: int,
    project_id: str | None,
    store: str | None,
    reload: bool,
    debug: bool,
    access_log: bool,
    auth: bool | None,
    env_file: str | None,
    log_format: str | None,
    workers: int | None,
) -> None:
    """Serve the app in APP_DIR (default: the current directory).

    APP_DIR holds main.py and cerebrium.toml. Each public function of main.py (defined there,
    name not starting with _) becomes an endpoint; the server prints a curl line for each.
    """
    from cortex.server import ServeOptions
    from cortex.server import serve as run_server

    options = ServeOptions(
        app_dir, host, port, project_id, store, reload, debug, access_log, auth, env_file, log_format, workers
    )
    sys.exit(_run(lambda: run_server(options), debug))


@cli.command()
@click.option(
    "--project-id",
    envvar="CORTEX_PROJECT_ID",
    default=None,
    help="The projectId claim: the project the server serves (env CORTEX_PROJECT_ID).  [default: p-local]",
)
@click.option(
    "--ttl", default=3600, show_default=True, type=click.IntRange(1), help="Seconds until it expires."
)
@click.option("--sub", default=None, help="The subject (sub claim), e.g. who the token is for.")
def token(project_id: str | None, ttl: int, sub: str | None) -> None:
    """Print an HS256 token signed with CORTEX_JWT_SECRET, for calling a server with auth on.

    Audience and issuer come from CORTEX_JWT_AUDIENCE and CORTEX_JWT_ISSUER when set.
    """
    sys.exit(_run(lambda: _print_token(project_id, ttl, sub), debug=False))


def _print_token(project_id: str | None, ttl: int, subject: str | None) -> int:
    import time

    from cortex.auth import mint_token
    from cortex.config import load_settings
    from cortex.errors import ConfigError

    settings = load_settings(project_id=project_id)
    if settings.jwt_secret is None:
        raise ConfigError(
            "CORTEX_JWT_SECRET is not set: export the same secret the server uses "
            "(at least 32 bytes) and run cortex token again."
        )
    click.echo(
        mint_token(
            settings.jwt_secret,
            settings.project_id,
            ttl,
            subject,
            time.time(),
            aud=settings.jwt_audience,
            iss=settings.jwt_issuer,
        )
    )
    return 0


@cli.command()
@click.argument("name", required=False)
@click.option("--template", "-t", default="basic", show_default=True, help="Which template to start from.")
@click.option("--list", "list_only", is_flag=True, help="List the templates, one line each, and exit.")
def init(name: str | None, template: str, list_only: bool) -> None:
    """Create the app folder NAME (main.py, cerebrium.toml, README.md) from a template."""
    sys.exit(_run(lambda: _init(name, template, list_only), debug=False))


def _init(name: str | None, template: str, list_only: bool) -> int:
    from cortex.errors import ScaffoldError
    from cortex.scaffold import describe_templates, list_templates, next_steps, scaffold

    if list_only:
        click.echo(describe_templates(list_templates()))
        return 0
    if name is None:
        raise ScaffoldError("Name the app: cortex init NAME [--template T] (cortex init --list shows T).")
    click.echo(next_steps(scaffold(name, template, Path.cwd())))
    return 0


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("target")
@click.option("--data", default=None, help="The arguments as one JSON object, as the HTTP body would be.")
@click.option("--debug", is_flag=True, help="Show the traceback when the function raises.")
@click.pass_context
def run(ctx: click.Context, target: str, data: str | None, debug: bool) -> None:
    """Call one function of main.py here, without a server, and print its JSON result.

    TARGET is FUNCTION, main.py::FUNCTION or APP_DIR/main.py::FUNCTION. Arguments come from
    --data '{...}' and/or --name value pairs (a value is read as JSON when it parses, else as a
    string). Arguments are validated as the server validates them. A generator prints one JSON
    line per chunk as it comes. What the app prints goes to stderr.
    """
    from cortex.local_run import parse_arguments, parse_target, run_function

    def call() -> int:
        arguments = parse_arguments(data, ctx.args)
        return run_function(parse_target(target), arguments, sys.stdout)

    sys.exit(_run(call, debug))


@cli.command()
@click.argument("app_dir", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--output",
    default=None,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the Dockerfile, ignore file, cortex wheel and k8s.yaml.  "
    "[default: APP_DIR/.cortex/build]",
)
@click.option("--tag", default=None, help="Image tag.  [default: <app name>:latest]")
@click.option("--k8s", is_flag=True, help="Also write Kubernetes manifests (Deployment, Service, HPA).")
@click.option(
    "--project-id",
    envvar="CORTEX_PROJECT_ID",
    default="p-local",
    show_default=True,
    help="Project id set in the manifests' env (env CORTEX_PROJECT_ID).",
)
@click.option("--debug", is_flag=True, help="Show the traceback of an error.")
def build(
    app_dir: Path, output: Path | None, tag: str | None, k8s: bool, project_id: str, debug: bool
) -> None:
    """Turn cerebrium.toml into a container image recipe, and build it when Docker is running.

    Without a Docker engine, the files are written and the docker build command is printed.
    """
    from cortex.builder import BuildOptions
    from cortex.builder import build as run_build

    if not app_dir.is_dir():
        click.echo(f"Error: {app_dir} is not a folder. Pass the folder holding cerebrium.toml.", err=True)
        sys.exit(EXIT_ERROR)
    options = BuildOptions(app_dir, output, tag, k8s, project_id)
    sys.exit(_run(lambda: run_build(options, click.echo), debug))


def _run(action: Callable[[], int], debug: bool) -> int:
    try:
        return action()
    except CortexError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"Error: {exc.message}", err=True)
        return EXIT_ERROR


def main() -> None:
    cli()
