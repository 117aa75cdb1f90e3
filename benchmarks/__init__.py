"""mdr benchmarks: quality and performance tables (`python -m benchmarks.<name>`)."""
