"""Measuring: timing and A/B comparison, the metrics convention, thresholds, reports, profiling, scenarios."""
