"""The seed's gaming leaderboard as a runnable example: ``python -m examples.leaderboard``."""
