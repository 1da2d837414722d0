"""Optimizers and regularisers that torch and timm do not ship: SPD, L2-SP, and a factory for all methods."""
