"""QuDAG-Evo dag package."""
