"""QuDAG-Evo node package."""
