"""Learning-rate search: one best rate per setting into an LR table (results/lrs/<task>.csv).

- table: the tables (read with validation, merge, lookup) and the paper's 5% extraction rule
- registry: what a task is, the registered tasks, setting selection
- closed_form, networks: the tasks of the closed-form and network experiments
- grid: the batched grid backend; propulate_backend: the paper's Propulate search over MPI
- pruning: the paper's pruning rule (a Propulate surrogate)
- recipes: the exact searches behind every committed table (make lrs-*)

Importing fgexp.lr loads neither MPI, Propulate nor torchvision: tasks and backends are
imported where they are used.
"""
