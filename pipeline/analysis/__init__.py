"""Analyses outside the main pipeline: synthetic checks of the theory behind the methods."""
