"""Keeping an index in step with what should be in it: a photo folder, embedding shards, enrolments."""
