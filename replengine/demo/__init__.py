"""A whole resource on this one machine: the demo, the multi-process tests, the benchmarks."""
