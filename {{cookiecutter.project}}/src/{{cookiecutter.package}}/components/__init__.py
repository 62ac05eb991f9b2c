"""Pipeline steps. `features`, `train` and `evaluate` hold the logic as pure functions (unit
tested, no kfp); `ops` wraps each in a `@dsl.component` that runs in the project image."""
