"""Building blocks of `compass eval`: quality metrics, Bjontegaard deltas and classical baseline codecs."""
