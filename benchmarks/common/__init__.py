"""What several benchmarks share, one module per job.

- `server`: the real `serve` (nginx + gunicorn), or a gunicorn app alone, on a free loopback port;
- `load`: the concurrent load generator and what it records;
- `pictures`: the JPEGs the benchmarks send;
- `models`: a model folder with random weights, as training writes one;
- `procfs`: a process's memory from /proc/<pid>/status;
- `tables`: percentiles and markdown-table pieces;
- `report`: the stamped sections of BENCHMARKS.md.
"""
