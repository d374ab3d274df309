"""Scale-out on Ray Serve: each replica loads its own engine and serves the same ASGI app as
``smallmind serve``, with as many threads as CPUs Ray gave it (the `ray` extra).

From a shell (see docs/scaling.md)::

    serve run smallmind.serve.ray:app_builder model=/models/SmolLM2.gguf replicas=2 cpus=1

From Python::

    from ray import serve
    from smallmind.serve.ray import app_builder
    serve.run(app_builder({"replicas": 2, "cpus": 1}), route_prefix="/")
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from ._backend import load_engine
from .app import create_app

__all__ = ["SmallmindServer", "app_builder"]


@serve.deployment(name="smallmind", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
@serve.ingress()
class SmallmindServer:
    """One replica: an engine on this replica's CPUs, behind the OpenAI-compatible app."""

    def __init__(
        self, model: str | None = None, *, parallel: int = 4, ctx: int | None = None, **app_options: Any
    ):
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        # Not `self.app`: Ray's ingress wrapper owns that name.
        self._engine = load_engine(model, n_threads=max(1, int(cpus)), n_ctx=ctx)
        self._asgi_app = create_app(self._engine, parallel=parallel, **app_options)

    def __serve_build_asgi_app__(self) -> Any:
        return self._asgi_app


_INT_ARGS = ("replicas", "min_replicas", "max_replicas", "parallel", "ctx", "max_queue", "max_tokens")
_FLOAT_ARGS = ("cpus", "target_ongoing_requests", "timeout")


def app_builder(args: dict[str, Any]) -> Application:
    """The application ``serve run`` builds from ``key=value`` arguments:

    ``model`` (a path present on every node; default: the embedded model), ``cpus`` per
    replica (also its threads; default 1), ``parallel`` slots per replica (default 4), ``ctx``,
    ``api_key``, ``max_queue``, ``max_tokens``, ``timeout``; and either ``replicas`` (a fixed
    count, default 1) or ``min_replicas``/``max_replicas`` with ``target_ongoing_requests``
    (autoscaling on the requests in flight per replica, default ``parallel``).
    """
    unknown = set(args) - set(_INT_ARGS) - set(_FLOAT_ARGS) - {"model", "api_key"}
    if unknown:
        raise ValueError(f"unknown argument(s) {sorted(unknown)}; see smallmind.serve.ray.app_builder")
    opts: dict[str, Any] = {}
    for name, value in args.items():
        if value is None:
            continue
        opts[name] = int(value) if name in _INT_ARGS else float(value) if name in _FLOAT_ARGS else str(value)
    cpus = opts.pop("cpus", 1.0)
    parallel = opts.pop("parallel", 4)
    deployment_options: dict[str, Any] = {"ray_actor_options": {"num_cpus": cpus}}
    if "min_replicas" in opts or "max_replicas" in opts:
        deployment_options["autoscaling_config"] = {
            "min_replicas": opts.pop("min_replicas", 1),
            "max_replicas": opts.pop("max_replicas", 4),
            "target_ongoing_requests": opts.pop("target_ongoing_requests", parallel),
        }
        opts.pop("replicas", None)
    else:
        deployment_options["num_replicas"] = opts.pop("replicas", 1)
        opts.pop("target_ongoing_requests", None)
    model = opts.pop("model", None)
    deployment: Any = SmallmindServer  # a serve.Deployment, which the decorators' types do not show
    return deployment.options(**deployment_options).bind(model, parallel=parallel, **opts)
