"""The whole RL step on CPU against TRL."""
