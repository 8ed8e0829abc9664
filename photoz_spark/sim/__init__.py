"""The built-in simulated multi-survey quasar sky."""
