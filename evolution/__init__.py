"""QuDAG-Evo evolution package."""
