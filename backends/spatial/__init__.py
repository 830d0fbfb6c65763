"""The spatial-array backend: schedules and a cost model for FuseMax-style accelerators."""
