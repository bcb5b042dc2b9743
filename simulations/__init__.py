"""QuDAG-Evo simulations package."""
