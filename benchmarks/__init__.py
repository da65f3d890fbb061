"""Real-size measurements (not tests). Each script prints what it measured, as ratios where it compares."""
