"""The schema and the only code that speaks SQL."""
