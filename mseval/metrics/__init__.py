"""Forecast metrics: activity classification (`activity`), calibration of P(active) and counts
(`calibration`), streaming voxel reliability (`voxel`)."""
