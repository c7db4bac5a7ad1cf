"""Offline tools: checkpoints, data, analysis, compression, training, calibration, tuning, the bench. Engine code never imports them."""
