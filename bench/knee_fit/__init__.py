"""CPU time of the knee fit behind `stagger profile` (docs/benchmarks.md)."""

# The published study's Table 2: start offset (ms) → latency of stream 1 / stream 2 (ms).
STUDY_TABLE_2 = [
    (0, 127.1, 125.2),
    (20, 105.2, 105.5),
    (40, 84.8, 84.3),
    (45, 76.7, 82.2),
    (60, 78.9, 82.7),
    (75, 72.2, 76.3),
    (100, 72.8, 73.3),
]
