"""The pure model at the centre: records, trackers, verdicts. Standard library only."""
