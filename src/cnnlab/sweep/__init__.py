"""Many runs as Optuna studies: grids (recipes × seeds × settings) and searches.

A sweep is an Optuna study in a shared storage: a journal file on one machine, or a
PostgreSQL database that workers on many machines share. `create` stores the sweep's
definition in the study and enqueues every trial it will ever run (each grid point once;
N empty slots for a search, whose parameters the sampler fills in when a worker takes one),
so workers only ever take queued trials and no point runs twice.

Each trial trains an ordinary run folder, `SWEEP_DIR/runs/<name from its parameters>/`.
A trial whose worker died is requeued: on PostgreSQL when its heartbeat stops (Optuna's
`fail_stale_trials`, with `engine.retry` as its callback), on a journal file when its
process is gone (checked by every worker of this machine, and at each start). The requeued
trial keeps its parameters and run folder, so it continues from the folder's `last.pt`. A
trial that failed otherwise is queued again by the next `sweep work` a user starts.

Modules: `definition` (what a sweep runs; no Optuna), `storage` (journal file or database),
`sweeps` (create and load), `worker` (taking and training trials), `status` (trial records
and the search report), `cli` (the `cnnlab sweep` commands), and `engine`, the only module
that imports Optuna.
"""
