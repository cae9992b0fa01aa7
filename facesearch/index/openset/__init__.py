"""The open-set decision: ranking identities, the decision rules, their calibration (at every commit)."""
