"""Sweeps: settings, the shard worker, the pools, the driver, the plan and studies."""
