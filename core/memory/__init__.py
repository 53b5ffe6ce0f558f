"""The memory budget: cost formulas, the planner of batch and tile sizes."""
