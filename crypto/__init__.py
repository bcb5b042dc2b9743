"""QuDAG-Evo crypto package."""
