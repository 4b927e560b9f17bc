"""Energy accounting: what a run's energy is (reports), how it is read (sensors and channels), the meter
that brackets a run, and the split of a run's metered region into phases."""
