"""CPU time of the knee fit behind `stagger profile` (docs/benchmarks.md)."""
