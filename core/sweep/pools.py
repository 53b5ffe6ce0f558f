"""Where a sweep's shards run: one in-process worker, or one Ray actor per device.

A pool gives the driver (core/sweep/sweep.py) the model's description, the analyses' corpus-wide arrays
(their registry entries' ``corpus``: truncation's mean residual, mean ablation's means) and, shard by
shard, the tables.

This module is the pools' public face: callers import from here, and the pools live beside it:
``pool_local`` (``LocalPool``, ``ShardResult``), ``pool_ray`` (``RayPool``: lost workers replaced, their
shards run again) and ``ray_cluster`` (joining a cluster, its resources, Ray's messages on the
``horizon.ray`` logger).
"""

from __future__ import annotations

from horizon.core.sweep.pool_local import LocalPool, ShardResult
from horizon.core.sweep.pool_ray import FAILED_STARTS, PLACEMENT_NOTE_S, SHARD_TRIES, START_TIMEOUT_S, RayPool
from horizon.core.sweep.ray_cluster import CONNECT_TIMEOUT_S, log

__all__ = ["CONNECT_TIMEOUT_S", "FAILED_STARTS", "PLACEMENT_NOTE_S", "SHARD_TRIES", "START_TIMEOUT_S", "LocalPool",
           "RayPool", "ShardResult", "log"]
