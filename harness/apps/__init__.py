"""Small applications the web-integration tests and benchmarks serve."""
