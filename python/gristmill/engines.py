"""Where the corpus stages run: on this machine, or on a Ray cluster with Ray Data.

The one place that chooses between a stage's local function and its ``gristmill.ray_engine``
twin (the same results), for the CLI and pipeline files alike.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

ENGINES = ("local", "ray")


def _local(stage: str) -> Callable[..., Any]:
    if stage == "prep":
        from gristmill.prep import prep

        return prep
    if stage == "dedup":
        from gristmill.dedup import dedup

        return dedup
    if stage == "tokenize":
        from gristmill.shards import write_shards

        return write_shards
    raise ValueError(f"no stage {stage!r}: expected prep, dedup or tokenize")


def run_stage(stage: str, *args: Any, engine: str = "local", address: str | None = None,
              **options: Any) -> Any:
    """Runs ``stage`` (``prep``, ``dedup`` or ``tokenize``) with ``engine``.

    ``args`` and ``options`` are those of the local function (:func:`gristmill.prep.prep`,
    :func:`gristmill.dedup.dedup`, :func:`gristmill.shards.write_shards`) or of its Ray twin;
    ``address`` is the Ray cluster to join (a local one is started when it is None).

    Raises:
        ValueError: an unknown engine, or an option the engine does not take.
        ImportError: ``engine="ray"`` where Ray is not installed (saying how to install it).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be 'local' or 'ray', not {engine!r}")
    if engine == "ray":
        from gristmill import ray_engine

        ray_engine.require_ray()
        fn = getattr(ray_engine, stage)  # the Ray twin has the same name
        options["address"] = address
    else:
        if address is not None:
            raise ValueError("an address is for engine 'ray' (a Ray cluster to join)")
        fn = _local(stage)
    accepted = inspect.signature(fn).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{stage} on the {engine} engine takes no option {', '.join(unknown)}")
    return fn(*args, **options)
