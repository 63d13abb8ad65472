"""The bundled mock billing API (for the demo, the tests and the benchmarks) and the demo."""
