"""Running workflows: the engine, one run's driver, recovery, and what steps share."""
