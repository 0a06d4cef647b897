"""The test suite (a package, so `tests.*` helpers resolve here even when an installed distribution ships a top-level `tests`)."""
